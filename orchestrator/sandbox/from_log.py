"""Finishing a recorded shell changeset from the log, when its kept copy is gone.

A shell call's changeset is kept on the disk of the worker that ran it
(`sandbox.kept`) until it is applied. A redelivery that lands on another
host (or on a worker with another state folder) finds the completion in the
log but no kept copy: without this it would go on while the log says files
changed that the workspace does not hold.

The log holds one FileChanged per file: its hashes and a git-style diff.
`plan` rebuilds each edit from them: a file already at its `after` hash is
done; one at its `before` hash gets the recorded diff (a delete, or the
hunks through the patch tool's own parser) and must come out at the `after`
hash; anything else is refused with what to do. An executable bit the diff
sets or clears is given back. Binary and big files are recorded by hash
only, a symlink by its target (as git does), and a diff masked or sealed
in the log cannot give the recorded bytes back: those are refused too,
naming the files, rather than written wrong. Nothing is written unless every file can be rebuilt.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from events import payloads as p
from orchestrator.errors import ToolError, ToolInputError
from orchestrator.run.steps import PatchStep
from orchestrator.tools import files
from orchestrator.tools.base import FileEdit, Spilled, content_hash
from orchestrator.tools.jail import Jail

__all__ = ["plan"]


def plan(workspace: Path, recorded: Sequence[p.FileChanged], where: str) -> list[FileEdit]:
    """The edits that bring `workspace` to what `recorded` says the call left
    (an edit's `mode_after` is the executable bit to give it); `where` names
    the kept copy that was looked for (for the error). Symlinks are recorded
    by their target: one the log holds is refused as lost."""
    pending: list[p.FileChanged] = []
    lost = [fc.path for fc in recorded if _is_link(fc)]
    with Jail(Path(workspace).resolve()) as jail:
        for fc in recorded:
            now = _digest(jail, fc.path)
            if fc.path in lost or (now == fc.after_hash and not _mode_left(jail, fc)):
                continue
            if now != fc.before_hash:
                raise ToolInputError(
                    f"{fc.path} is neither as the recorded shell call {fc.call_id} found it "
                    "nor as it left it, and the call's kept changeset is not here "
                    f"({where}); nothing was applied. Restore the workspace from git "
                    "or rerun the job."
                )
            pending.append(fc)
    edits = []
    for fc in pending:
        edit = _rebuilt(workspace, fc)
        if edit is None:
            lost.append(fc.path)
        else:
            edits.append(edit)
    if lost:
        raise ToolError(
            f"the shell call {recorded[0].call_id} is recorded as complete, but its "
            f"changeset was kept by the worker that ran it and is not here ({where}), and "
            f"the log cannot give back {', '.join(sorted(lost))} (binary, too big to "
            "record, masked in the log, or a symlink); nothing was applied. Run the worker with "
            "the same state folder (ORCH_STATE_DIR, shared between hosts that share "
            "workspaces) or rerun the job."
        )
    return edits


def _header(fc: p.FileChanged) -> list[str]:
    """The recorded diff's header lines (modes), up to its first hunk."""
    return fc.diff.partition("\n--- ")[0].splitlines()


def _is_link(fc: p.FileChanged) -> bool:
    """Whether the record makes, removes or replaces a symlink (mode 120000)."""
    return any(line.endswith(" 120000") for line in _header(fc))


def _mode(fc: p.FileChanged) -> int | None:
    """The git mode the recorded diff leaves the file with, if it says."""
    for line in _header(fc):
        if line.startswith(("new mode ", "new file mode ")):
            return int(line.rsplit(" ", 1)[1], 8)
    return None


def _mode_left(jail: Jail, fc: p.FileChanged) -> bool:
    """Whether the file still lacks the executable bit the diff gives it
    (or has one the diff takes away)."""
    want = _mode(fc)
    if want is None or fc.after_hash is None:
        return False
    try:
        st = jail.resolve(fc.path).st
    except ToolInputError:
        return True
    return st is None or bool(st.st_mode & stat.S_IXUSR) != bool(want & stat.S_IXUSR)


def _digest(jail: Jail, rel: str) -> str | None:
    try:
        return jail.digest(rel)
    except ToolInputError:
        return "not a regular file"


def _rebuilt(workspace: Path, fc: p.FileChanged) -> FileEdit | None:
    """The edit `fc` records, checked against its `after` hash; None when
    the log cannot give it back."""
    if fc.after_hash is None and fc.before_hash is not None:
        # a delete: the file is checked by its hash when applied, never read
        return FileEdit(fc.path, Spilled(0, fc.before_hash), None)
    if fc.before_hash == fc.after_hash:  # the mode alone: the content is as recorded
        return FileEdit(
            fc.path, Spilled(0, fc.before_hash), Spilled(0, fc.after_hash), mode_after=_mode(fc)
        )
    if "\nBinary files " in fc.diff:
        return None
    try:
        edits = files.plan_patch(workspace, PatchStep(name="from-log", diff=fc.diff), ())
    except ToolInputError:
        return None
    for edit in edits:
        if edit.path == fc.path and content_hash(edit.after) == fc.after_hash:
            return replace(edit, mode_after=_mode(fc))
    return None

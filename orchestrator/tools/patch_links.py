"""The symlinks a patch may add (git's mode 120000: the file's content is the
link's target): only new ones, relative, resolving inside the workspace
through whatever symlinks are already there. A link leading out is refused
as PathRefused `link-escape`, which the policy denies under the rule the
shell changeset's links get (`symlink-escape`); where an allowed link leads
is judged as a path the call writes (`link_target`, by the patch tool)."""

from __future__ import annotations

import os
import posixpath
import secrets
from pathlib import Path

from orchestrator.errors import ToolInputError
from orchestrator.guard.changeset import link_escapes
from orchestrator.tools.base import FileEdit
from orchestrator.tools.jail import MAX_NAME_BYTES, Jail, PathRefused, Spot
from orchestrator.tools.paths import normalize_rel

__all__ = ["exists", "plan_link", "link_target", "stage_link"]


def exists(workspace: Path, rel: str) -> bool:
    """Whether anything (a symlink too) has the name `rel`."""
    with Jail(workspace) as jail:
        try:
            return jail.resolve(rel).st is not None
        except PathRefused:
            return True


def plan_link(workspace: Path, rel: str, target: bytes) -> FileEdit:
    """A new symlink `rel` -> `target` (a patch's mode 120000 file), allowed
    only when the target is relative and resolves inside the workspace
    (through any symlinks already there); else PathRefused `link-escape`,
    which the policy denies under the rule the shell changeset's links get.
    Where it leads is judged as a path the call writes (`link_target`)."""
    text = os.fsdecode(target)
    if not target or b"\0" in target or b"\n" in target:
        raise ToolInputError(
            f"the patch makes {rel} a symlink to {text!r}, which no link can name "
            "(empty, or a NUL or newline in it); fix the patch."
        )
    root = Path(workspace).resolve()
    if text.startswith("/"):
        raise link_escape(
            rel,
            text,
            "is absolute; a link into the workspace must be relative, so the "
            "workspace can move (a copy, a replay)",
        )
    if link_escapes(rel, text, str(root)):
        raise link_escape(rel, text, "leads out of the workspace")
    with Jail(root) as jail:
        try:
            jail.resolve(link_target(rel, target))
        except PathRefused as err:
            if err.kind not in ("escape", "loop"):
                raise
            raise link_escape(rel, text, f"resolves to a path that {err.how}") from None
        except ToolInputError:
            pass  # through a file, say: a dangling link inside, which nothing can follow
    return FileEdit(rel, None, target, link=True)


def link_target(rel: str, target: bytes) -> str:
    """Where the symlink `rel` -> `target` (relative) leads, lexically."""
    return normalize_rel(posixpath.join(posixpath.dirname(rel), os.fsdecode(target)))


def link_escape(rel: str, target: str, how: str) -> PathRefused:
    return PathRefused(
        f"the patch makes {rel} a symlink to {target!r}, which {how}; refused.",
        "link-escape",
        f"-> {target!r} {how}",
        rel,
    )


def stage_link(spot: Spot, target: bytes) -> str:
    """A new symlink to `target` beside the target name; returns its name."""
    tmp = f".{spot.name}.{secrets.token_hex(6)}.tmp"[-MAX_NAME_BYTES:]
    os.symlink(target, tmp, dir_fd=spot.dirfd)
    return tmp

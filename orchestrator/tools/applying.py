"""Applying planned file edits: all or nothing, durable, through the jail.

Each new content is staged in a temp file beside its target and made
durable, then every temp file is renamed over its target, then the renames
are made durable (`tools.durable`). A failure before the renames leaves the
workspace as it was; a failure during them puts back the files already
changed.

A chunk of sessions (`orchestrator.run.chunk`) stages all its sessions'
edits first and makes them durable by one sync of the file system
(`prestaged`) instead of one per session; `apply_edits` for the same edits
then only renames.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import ToolError, ToolInputError
from orchestrator.tools.aside import Aside, forget, put_back, set_aside
from orchestrator.tools.base import Content, FileEdit, Spilled, content_size, copy_content
from orchestrator.tools.durable import SYNCFS, make_durable, renames_durable, staged_durable
from orchestrator.tools.jail import MAX_NAME_BYTES, Jail, Spot
from orchestrator.tools.patch_links import stage_link

__all__ = ["apply_edits", "prestaged"]

_Key = tuple[str, tuple[tuple[str, str | None, str | None], ...]]
_PRESTAGED: contextvars.ContextVar[dict[_Key, _Staged] | None] = contextvars.ContextVar(
    "prestaged", default=None
)


def apply_edits(workspace: Path, edits: Sequence[FileEdit]) -> int:
    """Make every edit or none; returns the number of bytes written. Refuses
    (ToolInputError) if any file no longer has its planned `before` content.
    Every file is reached through the jail's directory descriptors.

    Durable when it returns (the new contents and the renames), unless called
    inside `deferred_durability()`: then the renames are durable only once the
    caller has called `make_durable` on what it collected."""
    ready = (_PRESTAGED.get() or {}).pop(_key(workspace, edits), None)
    if ready is not None:
        return ready.finish()
    if not edits:
        return 0  # a plan that changes nothing (most no-op steps): no jail to open
    staged = _Staged(Jail(workspace))
    try:
        staged.stage(edits, whole_fs=SYNCFS is not None)
        return staged.finish()
    finally:
        staged.close()


@contextlib.contextmanager
def prestaged(plans: Iterable[tuple[Path, Sequence[FileEdit]]]) -> Iterator[None]:
    """Stage the new contents of every (workspace, edits) now and make them
    durable by one sync per file system; `apply_edits` of the same edits
    inside only renames. What is not applied inside is undone on leaving.
    A plan that cannot be staged here is left to `apply_edits`, which meets
    (and reports) its error itself; without syncfs nothing is staged ahead."""
    found: dict[_Key, _Staged] = {}
    try:
        if SYNCFS is not None:
            for workspace, edits in plans:
                try:
                    st = _Staged(Jail(workspace))
                except OSError:
                    continue  # apply_edits meets it again, alone
                try:
                    st.stage(edits, whole_fs=False)  # synced below, once
                except Exception:  # noqa: BLE001 - apply_edits meets it again, alone
                    st.close()
                    continue
                found[_key(workspace, edits)] = st
            if found:
                try:
                    make_durable(st.jail.root for st in found.values())
                except OSError:
                    for st in found.values():
                        st.close()
                    found = {}
                for st in found.values():
                    st.whole_fs = True
        token = _PRESTAGED.set(found)
        try:
            yield
        finally:
            _PRESTAGED.reset(token)
    finally:
        for st in found.values():
            st.close()


def _key(workspace: Path, edits: Sequence[FileEdit]) -> _Key:
    return str(workspace), tuple((e.path, e.before_hash, e.after_hash) for e in edits)


@dataclass
class _Staged:
    """One set of edits between staging and renaming, its jail held open."""

    jail: Jail
    targets: list[tuple[FileEdit, Spot]] = field(default_factory=list)
    staged: list[tuple[str, Spot, FileEdit]] = field(default_factory=list)  # (temp, spot, edit)
    made_dirs: list[tuple[int, str]] = field(default_factory=list)
    whole_fs: bool = False  # the renames can be made durable by a sync too
    done: bool = False

    def stage(self, edits: Sequence[FileEdit], *, whole_fs: bool) -> None:
        """Check the plan against the disk and write every new content beside
        its target; durable here unless `whole_fs` is False and syncfs exists
        (the caller syncs). Undone on any error."""
        self.targets = _to_change(self.jail, edits)
        edit: FileEdit | None = None
        try:
            for i, (edit, spot) in enumerate(self.targets):
                if edit.after is None:
                    continue
                if spot.dirfd is None:  # a new file in a new folder
                    spot = self.jail.resolve(edit.path, make_parents=self.made_dirs)
                    self.targets[i] = (edit, spot)
                if spot.dirfd is None:  # never let dir_fd=None mean "the worker's cwd"
                    raise ToolError(
                        f"the folder of {edit.path} changed while it was being "
                        "written; nothing was changed. Run the step again."
                    )
                sync = SYNCFS is None  # a link is durable with its folder, after the rename
                tmp = (
                    stage_link(spot, edit.after)
                    if edit.link
                    else _stage(spot, edit.after, fsync=sync)
                )
                self.staged.append((tmp, spot, edit))
            self.whole_fs = staged_durable(self.staged, whole_fs) if whole_fs else False
        except OSError as err:
            self.undo()
            path = err.filename or (edit.path if edit else "")
            raise ToolError(
                f"could not stage the new content of {path}: "
                f"{err.strerror}; nothing was changed. Fix the cause (disk space, "
                "permissions) and run the step again."
            ) from err
        except BaseException:
            self.undo()
            raise

    def finish(self) -> int:
        """Rename every staged file over its target (and delete what the plan
        deletes); the renames durable, or left to `deferred_durability`."""
        self.done = True
        done: list[tuple[Spot, FileEdit]] = []
        edit: FileEdit | None = None
        try:
            aside = set_aside(self.targets)
        except OSError as err:
            self.undo()
            raise ToolError(
                f"could not keep the old content of {err.filename or 'a file'} while "
                f"applying: {err.strerror}; nothing was changed. Fix the cause and run "
                "the step again."
            ) from err
        try:
            for tmp, spot, edit in self.staged:
                os.replace(tmp, spot.name, src_dir_fd=spot.dirfd, dst_dir_fd=spot.dirfd)
                done.append((spot, edit))
            for edit, spot in self.targets:
                if edit.after is None and spot.dirfd is not None:
                    os.unlink(spot.name, dir_fd=spot.dirfd)
                    done.append((spot, edit))
        except OSError as err:
            _restore(done, aside)
            forget(aside)
            self.undo()
            raise ToolError(
                f"applying the edits failed at {edit.path if edit else ''}: {err.strerror}; "
                "the files already changed were put back. Fix the cause and run "
                "the step again."
            ) from err
        for edit, spot in self.targets:
            if edit.after is None:  # like git: a directory emptied by deletions goes too
                for dirfd, name in reversed(spot.chain):
                    if not _rmdir_quietly(dirfd, name):
                        break
        renames_durable(self.jail, done, self.whole_fs)
        forget(aside)
        return sum(content_size(e.after) for e, _ in self.targets if e.after is not None)

    def undo(self) -> None:
        """Remove the staged files and the folders made for them."""
        for tmp, spot, _ in self.staged:
            _unlink_quietly(spot.dirfd, tmp)
        for dirfd, name in reversed(self.made_dirs):
            _rmdir_quietly(dirfd, name)
        self.staged, self.made_dirs = [], []

    def close(self) -> None:
        """Undo what was staged and never renamed; release the jail."""
        if not self.done:
            self.undo()
            self.done = True
        self.jail.close()


def _to_change(jail: Jail, edits: Sequence[FileEdit]) -> list[tuple[FileEdit, Spot]]:
    """The edits that change a file, with their spots; refuses duplicates and stale plans."""
    targets: list[tuple[FileEdit, Spot]] = []
    seen: dict[tuple[int, int, str], str] = {}
    for edit in edits:
        spot = jail.resolve(edit.path)
        parent = os.fstat(spot.dirfd) if spot.dirfd is not None else None
        key = (parent.st_dev, parent.st_ino, spot.name) if parent else (-1, -1, spot.rel)
        if key in seen:
            raise ToolInputError(
                f"edits for {seen[key]} and {edit.path} name the same file; plan one edit per file."
            )
        seen[key] = edit.path
        current = jail.digest_spot(spot, edit.path)
        if current != edit.before_hash:
            raise ToolInputError(
                f"{edit.path} changed since planned (expected {_short(edit.before_hash)}, "
                f"found {_short(current)}); nothing was written. Plan the "
                "step again against the current files."
            )
        if edit.before != edit.after:
            targets.append((edit, spot))
    return targets


def _stage(spot: Spot, data: Content, *, fsync: bool = True) -> str:
    """Write `data` (a `Spilled` file: copied in chunks) to a fresh temp file
    beside the target (same mode), fsynced unless the caller syncs the file
    system; returns its name in the target's directory."""
    if isinstance(data, Spilled) and data.path is None:
        raise ToolError(f"the content of {spot.rel} is not held; it cannot be written back")
    tmp = f".{spot.name}.{secrets.token_hex(6)}.tmp"[-MAX_NAME_BYTES:]
    mode = stat.S_IMODE(spot.st.st_mode) if spot.st is not None else None
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o666,
        dir_fd=spot.dirfd,
    )
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, Spilled):
                copy_content(str(data.path), fh.fileno(), data.sha256)
            else:
                fh.write(data)
            fh.flush()
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            if fsync:
                os.fsync(fh.fileno())
    except BaseException:
        _unlink_quietly(spot.dirfd, tmp)
        raise
    return tmp


def _restore(done: list[tuple[Spot, FileEdit]], aside: Aside) -> None:
    for spot, edit in reversed(done):
        try:
            if put_back(aside, edit, spot):
                continue
            if edit.before is None:
                _unlink_quietly(spot.dirfd, spot.name)
            elif not (isinstance(edit.before, Spilled) and edit.before.path is None):
                os.replace(
                    _stage(spot, edit.before),
                    spot.name,
                    src_dir_fd=spot.dirfd,
                    dst_dir_fd=spot.dirfd,
                )
        except OSError:
            pass  # best effort: the original error is the one to report


def _unlink_quietly(dirfd: int | None, name: str) -> None:
    if dirfd is None:  # dir_fd=None would mean the worker's cwd
        return
    try:
        os.unlink(name, dir_fd=dirfd)
    except OSError:
        pass


def _rmdir_quietly(dirfd: int, name: str) -> bool:
    try:
        os.rmdir(name, dir_fd=dirfd)
        return True
    except OSError:
        return False


def _short(digest: str | None) -> str:
    return "no file" if digest is None else f"sha256 {digest[:12]}"

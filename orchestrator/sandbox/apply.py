"""Writing an allowed changeset into the workspace, idempotently.

Regular files go through `orchestrator.tools.files.apply_edits` (a temp file
beside the target, fsync, rename, through the jail's directory descriptors,
never writing through a symlink). Everything else (directories, symlinks,
modes, deletes of links) acts on a name relative to its parent's descriptor,
never following the final name.

Idempotent: a second `apply` after a crash in the middle finishes the job.
Each file whose content already has its `after` hash is skipped, each whose
content still has its `before` hash is written, and anything else is a
conflict (the workspace changed since the call) and nothing more is written.
Links, directories and modes are compared with their wanted state first.

Ownership: a file rewritten keeps its owner and a file made gets its
folder's owner, when the worker may say so (root); nothing else changes hands.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import ToolError, ToolInputError
from orchestrator.sandbox.changeset import Change, Changeset, Kind
from orchestrator.tools.base import FileEdit
from orchestrator.tools.files import apply_edits
from orchestrator.tools.jail import Jail

__all__ = ["apply", "give_exec_bits"]

_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NODE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def apply(workspace: Path, changeset: Changeset) -> int:
    """Write `changeset` (already judged) into `workspace`; returns the bytes
    written. Raises ToolInputError when a file is neither as the call found
    it nor as it left it."""
    root = Path(workspace).resolve()
    changes = changeset.changes
    # A file made where a symlink was: the link goes first (as a deleted one does).
    relinked = {
        c.path: c.target_before for c in changes if c.kind is Kind.CREATED and c.target_before
    }
    edits = _pending(root, changeset.edits(), relinked)
    owners = _owners(root, [e.path for e in edits if e.before is not None])
    deletes = [e for e in edits if e.after is None]
    writes = [e for e in edits if e.after is not None]
    written = 0
    if deletes:
        apply_edits(root, deletes)
    for c in changes:
        if c.kind is Kind.DELETED and not c.is_dir and c.before is None:
            _at(root, c.path, _unlink)
        elif c.path in relinked and any(e.path == c.path for e in writes):
            _at(root, c.path, _unlink)
    for c in sorted((c for c in changes if c.kind is Kind.DELETED and c.is_dir), key=_depth):
        _at(root, c.path, _rmdir)
    for c in sorted((c for c in changes if c.kind is Kind.DIRECTORY), key=_depth, reverse=True):
        _at(root, c.path, _mkdir)
    if writes:
        written = apply_edits(root, writes)
    for c in changes:
        if c.kind is Kind.SYMLINK:
            _at(root, c.path, lambda fd, name, c=c: _symlink(fd, name, c))
    for c in changes:
        if c.mode_after is not None and c.kind is not Kind.SYMLINK:
            _at(root, c.path, lambda fd, name, c=c: _chmod(fd, name, c.mode_after))
    _give_back(root, owners, [c.path for c in changes if c.kind in _MADE])
    return written


_MADE = (Kind.CREATED, Kind.DIRECTORY, Kind.SYMLINK)


def _depth(c: Change) -> int:
    return -c.path.count("/")


def _pending(
    root: Path, edits: tuple[FileEdit, ...], relinked: dict[str, str | None]
) -> list[FileEdit]:
    """The edits not yet made; a file in neither state is a conflict. A path
    in `relinked` was the symlink it maps to (its target) before the call."""
    out = []
    with Jail(root) as jail:
        for e in edits:
            if e.path in relinked and _link_target(root, e.path) == relinked[e.path]:
                out.append(e)  # still the link the command replaced
                continue
            try:
                now = jail.digest(e.path)
            except ToolInputError:
                now = "not a regular file"
            if now == e.after_hash:
                continue
            if now != e.before_hash:
                raise ToolInputError(
                    f"{e.path} changed in the workspace while the command ran (it is neither "
                    "as the command found it nor as it left it); nothing more was applied. "
                    "Run the step again."
                )
            out.append(e)
    return out


def _link_target(root: Path, rel: str) -> str | None:
    """Where the symlink `rel` points (None: not a symlink, or missing)."""
    with _parent(root, rel) as (fd, name):
        try:
            return os.readlink(name, dir_fd=fd)
        except OSError:
            return None


@contextlib.contextmanager
def _parent(root: Path, rel: str) -> Iterator[tuple[int, str]]:
    """An O_PATH descriptor of `rel`'s folder (made if missing, walked through
    the jail so no symlink leads out) and `rel`'s last name."""
    head, _, name = rel.rpartition("/")
    with Jail(root) as jail:
        if head:
            made: list[tuple[int, str]] = []
            spot = jail.resolve(head, make_parents=made)
            if spot.dirfd is None:
                raise ToolError(f"the folder of {rel} vanished while it was applied; run again")
            if spot.st is None:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(spot.name, 0o777, dir_fd=spot.dirfd)
            fd = os.open(spot.name, _DIR, dir_fd=spot.dirfd)
        else:
            fd = os.open(jail.root, _DIR)
        try:
            yield fd, name
        finally:
            os.close(fd)


def _at(root: Path, rel: str, act: object) -> None:
    with _parent(root, rel) as (fd, name):
        try:
            act(fd, name)  # type: ignore[operator]
        except OSError as err:
            raise ToolError(
                f"applying the change to {rel} failed: {err.strerror}; run the step "
                "again (what was applied already is kept, and skipped next time)."
            ) from err


def _lstat(fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _unlink(fd: int, name: str) -> None:
    st = _lstat(fd, name)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=fd)


def _rmdir(fd: int, name: str) -> None:
    try:
        os.rmdir(name, dir_fd=fd)
    except FileNotFoundError:
        pass
    except OSError as err:
        if err.errno != errno.ENOTDIR:
            raise


def _mkdir(fd: int, name: str) -> None:
    st = _lstat(fd, name)
    if st is None:
        os.mkdir(name, 0o777, dir_fd=fd)
    elif not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.EEXIST, "a file is where the folder goes")


def _symlink(fd: int, name: str, c: Change) -> None:
    st = _lstat(fd, name)
    if st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=fd) == c.target:
        return
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"[-255:]
    os.symlink(str(c.target), tmp, dir_fd=fd)
    try:
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=fd)
        raise


def give_exec_bits(workspace: Path, wanted: dict[str, bool]) -> None:
    """Set or clear the execute bits of regular files (path -> executable),
    as git does on checkout: where the file is readable, for whom it is."""
    root = Path(workspace).resolve()
    for rel, executable in wanted.items():
        _at(root, rel, lambda fd, name, x=executable: _exec_bit(fd, name, x))


def _exec_bit(fd: int, name: str, executable: bool) -> None:
    node = os.open(name, _NODE, dir_fd=fd)  # a symlink swapped in: ELOOP, not followed
    try:
        mode = stat.S_IMODE(os.fstat(node).st_mode)
        want = mode | (mode & 0o444) >> 2 if executable else mode & ~0o111
        if want != mode:
            os.fchmod(node, want)
    finally:
        os.close(node)


def _chmod(fd: int, name: str, mode: int | None) -> None:
    if mode is None:
        return
    node = os.open(name, _NODE, dir_fd=fd)  # a symlink swapped in: ELOOP, not followed
    try:
        if stat.S_IMODE(os.fstat(node).st_mode) != mode:
            os.fchmod(node, mode)
    finally:
        os.close(node)


def _owners(root: Path, rels: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for rel in rels:
        with contextlib.suppress(OSError):
            st = os.lstat(root / rel)
            out[rel] = (st.st_uid, st.st_gid)
    return out


def _give_back(root: Path, owners: dict[str, tuple[int, int]], made: list[str]) -> None:
    """A rewritten file is a new inode owned by the worker: give it its
    owner back; a file made gets its folder's. Only root can, and must."""
    if os.geteuid() != 0:
        return
    for rel in [*owners, *made]:
        path = root / rel
        with contextlib.suppress(OSError):
            want = owners.get(rel)
            if want is None:
                parent = os.stat(path.parent)
                want = (parent.st_uid, parent.st_gid)
            st = os.lstat(path)
            if (st.st_uid, st.st_gid) != want:
                os.chown(path, *want, follow_symlinks=False)

"""What a shell call changed, as a value: read from the overlay's upper
directory (`from_upper`, proportional to what changed) or from comparing a
copy with the workspace (`from_copy`, the fallback). Nothing here writes the
workspace: `orchestrator.sandbox.apply` does, once the changeset is judged
(`orchestrator.guard.changeset.judge`).

Renames show as a delete and a create. A directory the command replaced
(an overlay "opaque" directory) shows as the deletes of what it held and the
creates of what it holds now. A regular file with more than one link is a
`hardlink` change, whatever its content: a hard link in the changeset could
alias a file the policy hides or protects.

Memory stays bounded: a file bigger than `SPILL_BYTES` is never read whole.
Its hash is computed in chunks, and the changeset holds it as a `Spilled`
reference: the file the command wrote is hard-linked (or, across
filesystems, copied in chunks) into the changeset's own `spill` folder
beside the view, so it outlives the view; the folder goes with the
changeset (and, for a worker that died, with its stale views).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from orchestrator.tools.base import (
    SPILL_BYTES,
    Content,
    FileEdit,
    Spilled,
    content_hash,
    content_size,
    read_content,
)

__all__ = ["Change", "Changeset", "Kind", "from_upper", "from_copy"]

# What one changeset holds in memory in all (files of at most SPILL_BYTES);
# past it, every further file is held as a reference too.
HELD_BYTES = 32 << 20

_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")
_LINK = 0o120000


def git_mode(mode: int | None) -> int | None:
    """The mode git records for a regular file with permission bits `mode`:
    executable (100755) when its owner may execute it, else 100644."""
    if mode is None:
        return None
    return 0o100755 if mode & stat.S_IXUSR else 0o100644


class Kind(StrEnum):
    CREATED = "created"  # a regular file that did not exist
    MODIFIED = "modified"  # a regular file's content (and maybe mode)
    DELETED = "deleted"  # a file, symlink or (is_dir) directory
    MODE = "mode-changed"  # same content, other permission bits
    SYMLINK = "symlink"  # a symlink made or changed (target)
    HARDLINK = "hardlink"  # a regular file with other links
    SPECIAL = "special"  # a device, FIFO or socket
    DIRECTORY = "directory"  # a directory made


@dataclass(frozen=True)
class Change:
    """One path's change. `before`/`after` are the content of a regular
    file: its bytes, or a `Spilled` reference past SPILL_BYTES (None: no
    regular file there); modes are permission bits."""

    path: str  # relative to the workspace, POSIX separators
    kind: Kind
    before: Content | None = None
    after: Content | None = None
    mode_before: int | None = None
    mode_after: int | None = None
    target: str | None = None  # symlink: where it points
    target_before: str | None = None  # a symlink replaced or deleted: where it pointed
    is_dir: bool = False
    detail: str = ""  # special: what it is ("fifo", "socket", "char device 1:3")

    @property
    def before_hash(self) -> str | None:
        return content_hash(self.before)

    @property
    def after_hash(self) -> str | None:
        return content_hash(self.after)

    @property
    def size(self) -> int:
        return content_size(self.after)


@dataclass(frozen=True)
class Changeset:
    changes: tuple[Change, ...] = ()
    spill: str | None = None  # the folder the Spilled contents are in (removed with it)

    def __post_init__(self) -> None:
        if self.spill is not None:
            weakref.finalize(self, shutil.rmtree, self.spill, True)

    def __bool__(self) -> bool:
        return bool(self.changes)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(c.path for c in self.changes)

    def recorded(self) -> tuple[FileEdit, ...]:
        """What the log records and patches show, as `git diff` does: every
        regular file's content change, an executable bit set or cleared, a
        symlink made, retargeted or removed (its target is its content, mode
        120000), a file turned into a link or back. Not in it, as not in git's:
        folders, and permission bits other than the owner's execute bit."""
        out = []
        for c in self.changes:
            if c.is_dir or c.kind in (Kind.HARDLINK, Kind.SPECIAL):  # refused, never recorded
                continue
            was_link = c.target_before is not None
            before = os.fsencode(c.target_before) if was_link else c.before  # type: ignore[arg-type]
            was = _LINK if was_link else git_mode(c.mode_before) if before is not None else None
            if c.kind is Kind.SYMLINK:
                after, now = os.fsencode(c.target or ""), _LINK
            elif c.kind is Kind.DELETED:
                after, now = None, None
            else:
                after, now = (
                    c.after,
                    git_mode(c.mode_after if c.mode_after is not None else c.mode_before),
                )
            if (before is None and after is None) or (same(before, after) and was == now):
                continue
            out.append(FileEdit(c.path, before, after, c.kind is Kind.SYMLINK, was, now))
        return tuple(out)

    def edits(self) -> tuple[FileEdit, ...]:
        """The regular-file content changes as FileEdits (what diffs, hashes and
        `apply_edits` take); modes, symlinks and directories are not in them."""
        return tuple(
            FileEdit(c.path, c.before, c.after)
            for c in self.changes
            if not c.is_dir
            and (c.before is not None or c.after is not None)
            and not same(c.before, c.after)
        )


def from_upper(upper: Path, workspace: Path) -> Changeset:
    """The changeset an overlay's upper directory holds, against its lower
    layer (the untouched workspace)."""
    return _held(_walk_upper(_Budget(), str(upper), str(workspace), ""), upper.parent)


def from_copy(copy: Path, workspace: Path, since_ns: int) -> Changeset:
    """The changeset between the workspace and a copy of it the command ran
    against. A regular file whose ctime is before `since_ns` (the end of the
    copy) was not touched; others are compared byte for byte."""
    return _held(_walk_copy(_Budget(), str(copy), str(workspace), "", since_ns), copy.parent)


def same(a: Content | None, b: Content | None) -> bool:
    """Whether two contents are equal (by hash when one is Spilled)."""
    if isinstance(a, Spilled) or isinstance(b, Spilled):
        return content_hash(a) == content_hash(b)
    return a == b


def _held(changes: Iterator[Change], view_root: Path) -> Changeset:
    """The changeset, its Spilled contents moved out of the view (which is
    removed once the call ends) into a folder of their own beside it."""
    out: list[Change] = []
    spill: str | None = None
    for c in sorted(changes, key=_order):
        if isinstance(c.after, Spilled) and c.after.path is not None:
            if spill is None:
                spill = tempfile.mkdtemp(prefix=f"{view_root.name}-spill-", dir=view_root.parent)
            kept = os.path.join(spill, str(len(out)))
            link_or_copy(c.after.path, kept)
            c = replace(c, after=replace(c.after, path=kept))
        out.append(c)
    return Changeset(tuple(out), spill)


def link_or_copy(src: str, dst: str) -> None:
    """Make `dst` hold `src`'s bytes: a hard link on the same filesystem,
    else a copy in chunks."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _order(c: Change) -> tuple[str, int]:
    return (c.path, 0 if c.kind is Kind.DELETED else 1)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


class _Budget:
    """What one changeset may hold in memory in all: past `left` bytes, even
    a small file is held as a `Spilled` reference."""

    def __init__(self, left: int = HELD_BYTES) -> None:
        self.left = left


def _read(h: _Budget, path: str, st: os.stat_result, *, keep: bool = False) -> Content:
    """A regular file's content; past SPILL_BYTES, or past what the budget
    has left, hashed in chunks and held as a reference (`keep`: to this
    file, for an after side to copy from)."""
    data = read_content(path, st.st_size, keep=keep, limit=min(SPILL_BYTES, h.left))
    if isinstance(data, bytes):
        h.left -= len(data)
    return data


def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: str) -> bool:
    for name in _OPAQUE:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _walk_upper(h: _Budget, upper: str, lower: str, rel: str) -> Iterator[Change]:
    for entry in os.scandir(os.path.join(upper, rel)):
        r = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        low_path = os.path.join(lower, r)
        low = _lstat(low_path)
        if _whiteout(st):
            if low is not None:
                yield from _deleted(h, low_path, r, low)
            continue
        if stat.S_ISDIR(st.st_mode):
            if low is not None and stat.S_ISDIR(low.st_mode):
                if stat.S_IMODE(low.st_mode) != stat.S_IMODE(st.st_mode):
                    yield _mode(r, low, st, is_dir=True)
                if _opaque(entry.path):
                    yield from _opaque_deletes(h, entry.path, low_path, r)
            else:
                if low is not None:
                    yield from _deleted(h, low_path, r, low)
                yield Change(r, Kind.DIRECTORY, mode_after=stat.S_IMODE(st.st_mode), is_dir=True)
            yield from _walk_upper(h, upper, lower, r)
            continue
        yield from _entry(h, entry.path, st, low_path, low, r)


def _opaque_deletes(h: _Budget, path: str, low_path: str, rel: str) -> Iterator[Change]:
    """A replaced directory: what the lower one held that the upper one lacks."""
    kept = set(os.listdir(path))
    for entry in os.scandir(low_path):
        if entry.name not in kept:
            yield from _deleted(
                h, entry.path, f"{rel}/{entry.name}", entry.stat(follow_symlinks=False)
            )


def _walk_copy(h: _Budget, copy: str, lower: str, rel: str, since_ns: int) -> Iterator[Change]:
    new_top, old_top = os.path.join(copy, rel), os.path.join(lower, rel)
    seen = set()
    for entry in os.scandir(new_top):
        r = f"{rel}/{entry.name}" if rel else entry.name
        seen.add(entry.name)
        st = entry.stat(follow_symlinks=False)
        low_path = os.path.join(old_top, entry.name)
        low = _lstat(low_path)
        if stat.S_ISDIR(st.st_mode):
            if low is not None and stat.S_ISDIR(low.st_mode):
                if stat.S_IMODE(low.st_mode) != stat.S_IMODE(st.st_mode):
                    yield _mode(r, low, st, is_dir=True)
            else:
                if low is not None:
                    yield from _deleted(h, low_path, r, low)
                yield Change(r, Kind.DIRECTORY, mode_after=stat.S_IMODE(st.st_mode), is_dir=True)
            yield from _walk_copy(h, copy, lower, r, since_ns)
            continue
        untouched = (
            low is not None
            and stat.S_ISREG(st.st_mode)
            and stat.S_ISREG(low.st_mode)
            and st.st_nlink == 1
            and st.st_ctime_ns < since_ns
        )
        if not untouched:
            yield from _entry(h, entry.path, st, low_path, low, r)
    low_dir = _lstat(old_top)
    if low_dir is None or not stat.S_ISDIR(low_dir.st_mode):
        return  # a folder the command made: nothing was there before
    for entry in os.scandir(old_top):
        if entry.name not in seen:
            r = f"{rel}/{entry.name}" if rel else entry.name
            yield from _deleted(h, entry.path, r, entry.stat(follow_symlinks=False))


def _entry(
    h: _Budget, path: str, st: os.stat_result, low_path: str, low: os.stat_result | None, rel: str
) -> Iterator[Change]:
    """A non-directory in the command's view against what was there before."""
    if low is not None and stat.S_ISDIR(low.st_mode):
        yield from _deleted(h, low_path, rel, low)
        low = None
    before = _read(h, low_path, low) if low is not None and stat.S_ISREG(low.st_mode) else None
    was_link = os.readlink(low_path) if low is not None and stat.S_ISLNK(low.st_mode) else None
    mode_before = stat.S_IMODE(low.st_mode) if low is not None else None
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        if target != was_link:
            yield Change(
                rel,
                Kind.SYMLINK,
                before=before,
                mode_before=mode_before,
                target=target,
                target_before=was_link,
            )
        return
    if not stat.S_ISREG(st.st_mode):
        yield Change(rel, Kind.SPECIAL, before=before, target_before=was_link, detail=_what(st))
        return
    after = _read(h, path, st, keep=True)
    if st.st_nlink > 1:
        yield Change(rel, Kind.HARDLINK, before=before, after=after, mode_after=mode)
    elif low is None or was_link is not None:
        yield Change(rel, Kind.CREATED, after=after, mode_after=mode, target_before=was_link)
    elif not same(before, after):
        yield Change(rel, Kind.MODIFIED, before, after, mode_before, mode)
    elif mode_before != mode:
        yield _mode(rel, low, st, before=before)


def _mode(
    rel: str,
    low: os.stat_result,
    st: os.stat_result,
    *,
    is_dir: bool = False,
    before: Content | None = None,
) -> Change:
    return Change(
        rel,
        Kind.MODE,
        before=before,
        after=before,
        mode_before=stat.S_IMODE(low.st_mode),
        mode_after=stat.S_IMODE(st.st_mode),
        is_dir=is_dir,
    )


def _deleted(h: _Budget, path: str, rel: str, st: os.stat_result) -> Iterator[Change]:
    """Deletes of `path` and, for a directory, of everything below it
    (deepest last in the sort: apply removes directories bottom-up)."""
    if stat.S_ISDIR(st.st_mode):
        for entry in os.scandir(path):
            yield from _deleted(
                h, entry.path, f"{rel}/{entry.name}", entry.stat(follow_symlinks=False)
            )
        yield Change(rel, Kind.DELETED, mode_before=stat.S_IMODE(st.st_mode), is_dir=True)
        return
    before = _read(h, path, st) if stat.S_ISREG(st.st_mode) else None
    target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    yield Change(
        rel, Kind.DELETED, before=before, mode_before=stat.S_IMODE(st.st_mode), target_before=target
    )


def _what(st: os.stat_result) -> str:
    if stat.S_ISFIFO(st.st_mode):
        return "fifo"
    if stat.S_ISSOCK(st.st_mode):
        return "socket"
    kind = "char" if stat.S_ISCHR(st.st_mode) else "block"
    return f"{kind} device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"

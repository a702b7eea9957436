"""The filesystem jail: every file tool opens, writes and deletes through
directory file descriptors walked from the workspace root, one component at a
time, never following a symlink the kernel resolves on its own.

Why not `realpath` then `open`: between the two a symlink can be swapped in
and the open follows it out of the workspace. Here each component is opened
with `O_NOFOLLOW` relative to the directory before it; a symlink is read and
its target walked the same way, and `..` pops a directory we already hold, so
the walk can never rise above the root however the tree changes meanwhile.
The final name is acted on relative to its parent's descriptor (`openat`,
`renameat`, `unlinkat`), so a name swapped for a symlink after the walk is
refused (reads) or replaced as a link (writes), never followed.

Refused with a typed error (ToolInputError): NUL bytes, absolute paths,
absurd lengths, `..` or symlinks that leave the workspace, symlink loops,
reading FIFOs, sockets and devices, and reading a regular file with hard
links the workspace does not hold (its content is a file outside: `ln
/etc/shadow ws/notes` would read it through the workspace).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType

from orchestrator.errors import ToolInputError
from orchestrator.guard.facts import Kind, PathFact, Refusal
from orchestrator.guard.links import census, held_inside

__all__ = [
    "Jail",
    "Spot",
    "PathRefused",
    "path_facts",
    "patch_symlink",
    "MAX_PATH_BYTES",
    "MAX_NAME_BYTES",
    "MAX_SYMLINKS",
]

MAX_PATH_BYTES = 4096  # PATH_MAX
MAX_NAME_BYTES = 255  # NAME_MAX
MAX_SYMLINKS = 40  # what the kernel allows in one resolution

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class PathRefused(ToolInputError):
    """The walk refused the path itself: it leaves the workspace (`escape`),
    loops through symlinks (`loop`), no file can have it (`invalid`), it is
    no regular file (`special`) or a file with hard links outside the
    workspace (`hardlink`). `path_facts` and a plan refused with one hand
    these to the policy, which denies them by rule."""

    def __init__(self, message: str, kind: Refusal, how: str, rel: str) -> None:
        super().__init__(message)
        self.kind: Refusal = kind
        self.how = how
        self.rel = rel

    def fact(self, access: str) -> PathFact:
        return PathFact(access, self.rel, refusal=self.kind, detail=self.how)


@dataclass(frozen=True)
class Spot:
    """Where a path lands: the name `name` in the directory open as `dirfd`.

    `rel` is the real path relative to the workspace (symlinks resolved), the
    one policy judges. `chain` holds (parent fd, name) for every directory
    from the root down to `dirfd`, so emptied parents can be removed without
    walking by name again. `dirfd` is None when a parent does not exist yet.
    """

    dirfd: int | None
    name: str
    rel: str
    chain: tuple[tuple[int, str], ...] = ()
    st: os.stat_result | None = None  # lstat of the name at walk time; None: missing


class Jail:
    """A workspace opened for walking. Use as a context manager: it holds
    directory descriptors until closed. Not shared between threads."""

    def __init__(self, workspace: Path | str) -> None:
        self.root = Path(workspace).resolve()
        self._root_fd = os.open(self.root, _DIR_FLAGS)
        self._fds: list[int] = []
        # Directories already walked, by their lexical path: a replace over a
        # thousand files in one folder walks that folder once.
        self._dirs: dict[str, tuple[int, tuple[str, ...], tuple[tuple[int, str], ...]]] = {}
        self._census: dict[int, int] | None = None  # names per inode, made when first asked

    def __enter__(self) -> Jail:
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()

    def close(self) -> None:
        for fd in (*self._fds, self._root_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        self._dirs.clear()
        self._census = None

    def links_inside(self, st: os.stat_result) -> bool:
        """Whether the workspace holds every one of the `st_nlink` names of
        the file `st` (a file with one link, or hard links made inside it,
        `cp -l`). The first file with more than one link costs one walk of
        the workspace (at most MAX_LINK_SCAN entries, not following symlinks
        or leaving its file system); a tree too big to account for counts as
        outside."""
        if st.st_nlink <= 1:
            return True
        if self._census is None:
            self._census = _census(self.root)
        root_dev = os.fstat(self._root_fd).st_dev
        return st.st_dev == root_dev and held_inside(self._census, st.st_ino, st.st_nlink)

    # --- resolving --------------------------------------------------------------

    def resolve(self, rel: str, *, make_parents: list[tuple[int, str]] | None = None) -> Spot:
        """Walk `rel` from the root. With `make_parents`, missing directories are
        created (and recorded there as (parent fd, name), for undo)."""
        parts = _components(rel)
        fd, names, chain = self._root_fd, (), ()
        dirpart = "/".join(parts[:-1])
        if dirpart in self._dirs and ".." not in parts:
            fd, names, chain = self._dirs[dirpart]
            parts = parts[-1:]
        todo = deque(parts)
        links = 0
        plain = True  # no symlink or `..` met yet: what was walked can be cached by name
        while todo:
            comp = todo.popleft()
            if comp == "..":
                plain = False
                if not names:
                    raise _escape(
                        rel,
                        "climbs out of the workspace with '..'"
                        if not links
                        else "follows a symlink out of the workspace",
                    )
                fd, names, chain = chain[-1][0], names[:-1], chain[:-1]
                continue
            if not todo:  # the last component: looked at, not opened
                st = _lstat(fd, comp)
                if st is not None and stat.S_ISLNK(st.st_mode):
                    links += 1
                    fd, names, chain = self._follow(fd, comp, rel, links, todo, names, chain)
                    plain = False
                    continue
                return Spot(fd, comp, "/".join((*names, comp)), chain, st)
            try:
                sub = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if make_parents is None:
                    return _missing(rel, names, comp, todo)
                os.mkdir(comp, 0o777, dir_fd=fd)
                make_parents.append((fd, comp))
                sub = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = _lstat(fd, comp)
                if st is None:  # it vanished since the open: look again
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise ToolInputError(
                            f"{rel!r} keeps changing while it is resolved; "
                            "refused. Run the step again."
                        ) from None
                    todo.appendleft(comp)
                    continue
                if not stat.S_ISLNK(st.st_mode):
                    raise ToolInputError(
                        f"cannot use {rel!r}: {'/'.join((*names, comp))} is a file, not a "
                        "directory. Fix the path, or remove that file first."
                    ) from None
                links += 1
                fd, names, chain = self._follow(fd, comp, rel, links, todo, names, chain)
                plain = False
                continue
            self._fds.append(sub)
            fd, names, chain = sub, (*names, comp), (*chain, (fd, comp))
            if plain:
                self._dirs["/".join(names)] = (fd, names, chain)
        # `rel` named a directory through `..` or is the root itself
        if not names:
            return Spot(self._root_fd, ".", ".", (), os.fstat(self._root_fd))
        return Spot(chain[-1][0], names[-1], "/".join(names), chain[:-1], os.fstat(fd))

    def _follow(
        self,
        fd: int,
        comp: str,
        rel: str,
        links: int,
        todo: deque[str],
        names: tuple[str, ...],
        chain: tuple[tuple[int, str], ...],
    ) -> tuple[int, tuple[str, ...], tuple[tuple[int, str], ...]]:
        """Splice the target of the symlink `comp` into the walk. An absolute
        target is walked from the root again, if it points inside at all."""
        if links > MAX_SYMLINKS:
            raise PathRefused(
                f"path {rel!r} goes through more than {MAX_SYMLINKS} symlinks "
                "(a symlink loop?); remove the loop or use the file's real "
                "path.",
                "loop",
                f"goes through more than {MAX_SYMLINKS} symlinks (a symlink loop?)",
                rel,
            )
        try:
            target = os.readlink(comp, dir_fd=fd)
        except OSError as err:
            raise ToolInputError(
                f"cannot read the symlink {comp!r} in {rel!r}: {err.strerror}; "
                "it changed while being resolved. Run the step again."
            ) from err
        if target.startswith("/"):
            inside = PurePosixPath(os.path.normpath(target))
            if not inside.is_relative_to(self.root):
                raise _escape(
                    rel,
                    f"goes through the symlink {'/'.join((*names, comp))} -> "
                    f"{target}, outside the workspace",
                )
            todo.extendleft(reversed(_split(str(inside.relative_to(self.root)))))
            return self._root_fd, (), ()
        todo.extendleft(reversed(_split(target)))
        return fd, names, chain

    # --- acting -----------------------------------------------------------------

    def read(self, rel: str) -> bytes | None:
        """The bytes of the regular file `rel`, or None if it does not exist."""
        spot = self.resolve(rel)
        return self.read_spot(spot, rel)

    def read_spot(self, spot: Spot, rel: str) -> bytes | None:
        chunks: list[bytes] = []
        return b"".join(chunks) if self._stream(spot, rel, chunks.append) else None

    def digest(self, rel: str) -> str | None:
        """The sha256 of the regular file `rel` (None: it does not exist),
        read in chunks: a file of any size costs no memory."""
        return self.digest_spot(self.resolve(rel), rel)

    def digest_spot(self, spot: Spot, rel: str) -> str | None:
        h = hashlib.sha256()
        return h.hexdigest() if self._stream(spot, rel, h.update) else None

    def _stream(self, spot: Spot, rel: str, sink: Callable[[bytes], object]) -> bool:
        """Feed the regular file at `spot` to `sink` in chunks; False when it
        does not exist."""
        if spot.dirfd is None or spot.st is None:
            return False
        if stat.S_ISDIR(spot.st.st_mode):
            raise ToolInputError(
                f"{rel} is a directory, not a file; give the path of a file inside it."
            )
        _require_regular(spot.st, rel)
        try:
            fd = os.open(spot.name, _READ_FLAGS, dir_fd=spot.dirfd)
        except FileNotFoundError:
            return False
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ToolInputError(
                    f"{rel} was replaced by a symlink while it was being "
                    "opened; refused. Run the step again."
                ) from None
            raise
        try:
            now = os.fstat(fd)
            _require_regular(now, rel)
            if (now.st_dev, now.st_ino) != (spot.st.st_dev, spot.st.st_ino):
                raise ToolInputError(
                    f"{rel} was replaced while it was being opened; refused. Run the step again."
                )
            if not self.links_inside(now):
                raise outside_link(rel)
            os.set_blocking(fd, True)
            while chunk := os.read(fd, 1 << 20):
                sink(chunk)
            return True
        finally:
            os.close(fd)


# --- pure helpers ------------------------------------------------------------------


def _components(rel: str) -> list[str]:
    """The checked components of a workspace path ("." for the root itself)."""
    if "\x00" in rel:
        raise PathRefused(
            f"path {rel!r} contains a NUL byte; no file can have that name. "
            "Fix the path in the step.",
            "invalid",
            "contains a NUL byte",
            rel,
        )
    size = len(os.fsencode(rel))
    if size > MAX_PATH_BYTES:
        raise PathRefused(
            f"path {rel[:60]!r}... is {size} bytes long, more than any file "
            f"system allows ({MAX_PATH_BYTES}); fix the path in the step.",
            "invalid",
            f"is {size} bytes long (at most {MAX_PATH_BYTES})",
            rel,
        )
    if rel.startswith("/"):
        raise PathRefused(
            f"path {rel!r} is absolute; tools only take paths relative to the "
            "workspace. Drop the leading '/'.",
            "escape",
            "is absolute",
            rel,
        )
    parts = _split(rel)
    for part in parts:
        if len(os.fsencode(part)) > MAX_NAME_BYTES:
            raise PathRefused(
                f"path {rel[:60]!r} has a name longer than {MAX_NAME_BYTES} "
                "bytes, which no file system allows; fix the path.",
                "invalid",
                f"has a name longer than {MAX_NAME_BYTES} bytes",
                rel,
            )
    return parts or ["."]


def _split(path: str) -> list[str]:
    return [c for c in path.split("/") if c not in ("", ".")]


def _lstat(fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _missing(rel: str, names: tuple[str, ...], comp: str, todo: deque[str]) -> Spot:
    """A path below a directory that does not exist: nothing to open, but its
    lexical rest still names the file that policy judges."""
    joined = os.path.normpath("/".join((*names, comp, *todo)))
    if joined == ".." or joined.startswith("../"):
        raise _escape(rel, "climbs out of the workspace with '..'")
    return Spot(None, PurePosixPath(joined).name, joined)


def _require_regular(st: os.stat_result, rel: str) -> None:
    if stat.S_ISREG(st.st_mode):
        return
    kind = _kind(st)
    what = {"fifo": "a FIFO", "socket": "a socket", "device": "a device"}.get(kind)
    if what is None:
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
    raise PathRefused(
        f"{rel} is {what}; file tools read and write regular files only "
        "(reading it could block or mean nothing). Use a regular file.",
        "special",
        f"is {what}",
        rel,
    )


def outside_link(rel: str) -> PathRefused:
    """A regular file whose link count the workspace does not account for."""
    return PathRefused(
        f"{rel} is a hard link to a file that also lives outside the workspace; file tools "
        "never read or write it (that would reach the file outside). Replace it with a "
        "copy (`cp --remove-destination`) if its content belongs in the workspace.",
        "hardlink",
        "is a hard link to a file that also lives outside the workspace",
        rel,
    )


def patch_symlink(rel: str) -> PathRefused:
    """A patch that changes or deletes the symlink `rel` (git's mode 120000)."""
    return PathRefused(
        f"the patch changes or deletes {rel}, a symlink (mode 120000); a patch may add a "
        "new link, but never changes, deletes or writes through one. Do that with a shell "
        "step (`ln -sf`, `rm`), whose changeset is judged.",
        "symlink",
        "is a symlink the patch changes or deletes (mode 120000)",
        rel,
    )


def _escape(rel: str, how: str) -> PathRefused:
    return PathRefused(
        f"path {rel!r} {how}; tools stay inside their target and do not "
        "follow symlinks out of it. Use the file's path inside the workspace.",
        "escape",
        how,
        rel,
    )


@contextlib.contextmanager
def _opened(where: Path | str | Jail) -> Iterator[Jail]:
    """`where` when it is a jail already open (its opener closes it), else a
    jail of that workspace for the call."""
    if isinstance(where, Jail):
        yield where
        return
    with Jail(where) as jail:
        yield jail


def real_paths(workspace: Path | str | Jail, rels: list[str]) -> list[str]:
    """Where each of `rels` really is (symlinks resolved), for those that are
    elsewhere: policy judges both names, so `notes -> .env` is read as `.env`.
    A path the jail refuses is left out; the tool refuses it when it runs."""
    out: list[str] = []
    with _opened(workspace) as jail:
        for rel in rels:
            try:
                real = jail.resolve(rel).rel
            except (ToolInputError, OSError):
                continue
            if real != os.path.normpath(rel):
                out.append(real)
    return out


# --- facts for the policy ------------------------------------------------------------

MAX_LINK_SCAN = 200_000  # entries walked to account for a file's hard links


def path_facts(workspace: Path | str | Jail, pairs: list[tuple[str, str]]) -> list[PathFact]:
    """What is at each (access, path) of a call, for the policy to judge
    before the tool runs (`orchestrator.guard.facts`). Errors other than the
    walk's own refusals (a file where a folder should be, a race) are left
    to the tool, which reports them when it runs."""
    out: list[PathFact] = []
    with _opened(workspace) as jail:
        for access, rel in pairs:
            try:
                spot = jail.resolve(rel)
            except PathRefused as err:
                out.append(err.fact(access))
                continue
            except (ToolInputError, OSError):
                continue
            kind = _kind(spot.st)
            outside = kind == "file" and spot.st is not None and not jail.links_inside(spot.st)
            out.append(PathFact(access, rel, kind, spot.rel, links_outside=outside))
    return out


def _kind(st: os.stat_result | None) -> Kind:
    if st is None:
        return "missing"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "other"


def _census(root: Path) -> dict[int, int]:
    """How many names each inode of a regular file has in the tree at `root`
    (`census` of its names; its own file system only, symlinks not followed);
    empty when the tree has more than MAX_LINK_SCAN entries, so nothing
    counts as held inside. One stat per directory: inodes come from the
    directory entries (d_ino)."""
    names: list[int] = []
    walked = 0
    dev = os.stat(root).st_dev
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            walked += 1
            if walked > MAX_LINK_SCAN:
                return {}
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.stat(follow_symlinks=False).st_dev == dev:
                        stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    names.append(entry.inode())
            except OSError:
                continue
    return census(names)

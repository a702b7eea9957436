"""Which folders of a kept mask walk changed since the last call (inotify),
so a call on an unchanged workspace costs one `read` instead of one `lstat`
per folder (`orchestrator.sandbox.masks`).

One inotify instance per process (the per-user instance limit is small; the
watch limit is large), a watch per folder the walk read. A folder's watch is
added before the folder is listed, so a change after the listing is always
reported. What cannot be followed exactly makes the whole tree dirty: the
queue overflowed, a folder was moved (every path below it changed name).
Where inotify is missing or out of watches, `available()` is False for that
tree and the walk falls back to checking folder mtimes.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Hashable

__all__ = ["DirWatch", "EVERYTHING"]

_IN_MODIFY_DIR = 0x100 | 0x200 | 0x40 | 0x80  # CREATE, DELETE, MOVED_FROM, MOVED_TO
_IN_SELF = 0x400 | 0x800  # DELETE_SELF, MOVE_SELF
_IN_ONLYDIR, _IN_DONT_FOLLOW, _IN_EXCL_UNLINK = 0x01000000, 0x02000000, 0x04000000
_IN_MOVED = 0x40 | 0x80
_IN_MOVE_SELF, _IN_DELETE_SELF = 0x800, 0x400
_IN_ISDIR, _IN_IGNORED, _IN_Q_OVERFLOW = 0x40000000, 0x8000, 0x4000
_WATCH = _IN_MODIFY_DIR | _IN_SELF | _IN_ONLYDIR | _IN_DONT_FOLLOW | _IN_EXCL_UNLINK
_HEAD = struct.Struct("iIII")
EVERYTHING = None  # `changed()`'s answer for a tree to walk again whole


class DirWatch:
    """Folders of trees (a key each) watched for entries made, removed or
    renamed in them."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._libc: ctypes.CDLL | None = None
        self._fd = -1
        self._wds: dict[int, tuple[Hashable, str]] = {}
        self._by_key: dict[Hashable, dict[str, int]] = {}
        self._broken: set[Hashable] = set()  # out of watches: fall back
        self._dirty: dict[Hashable, set[str] | None] = {}
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            return
        if fd >= 0:
            self._libc, self._fd = libc, fd

    @property
    def usable(self) -> bool:
        """False in a forked child (the instance is its parent's) or without inotify."""
        return self._fd >= 0 and os.getpid() == self.pid

    def available(self, key: Hashable) -> bool:
        return self.usable and key not in self._broken

    def watching(self, key: Hashable, rel: str) -> bool:
        """Whether folder `rel` of `key` is watched (a folder removed and made
        again under the same name is not, until it is read again)."""
        return rel in self._by_key.get(key, {})

    def add(self, key: Hashable, rel: str, path: str) -> None:
        """Watch folder `path` (`rel` in tree `key`); call before listing it."""
        if not self.available(key) or rel in self._by_key.get(key, {}):
            return
        assert self._libc is not None
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), _WATCH)
        if wd < 0:
            self._broken.add(key)  # ENOSPC, or it is gone: the caller's lstat decides
            return
        old = self._wds.get(wd)
        if old is not None and old != (key, rel):
            self._dirty[old[0]] = EVERYTHING  # one folder under two names (a bind mount)
            self._dirty[key] = EVERYTHING
        self._wds[wd] = (key, rel)
        self._by_key.setdefault(key, {})[rel] = wd

    def changed(self, key: Hashable) -> set[str] | None:
        """The folders of `key` reported changed since last asked (their
        watches stay), or EVERYTHING: walk the tree again whole."""
        self._drain()
        if key in self._broken or key not in self._by_key:
            return EVERYTHING
        return self._dirty.pop(key, set())

    def forget(self, key: Hashable) -> None:
        """Stop watching tree `key` (its walk is dropped or read again whole)."""
        wds = self._by_key.pop(key, {})
        if self.usable:
            assert self._libc is not None
            for wd in wds.values():
                self._libc.inotify_rm_watch(self._fd, wd)
        for wd in wds.values():
            self._wds.pop(wd, None)
        self._dirty.pop(key, None)
        self._broken.discard(key)

    def _drain(self) -> None:
        if not self.usable:
            return
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return
            at = 0
            while at + _HEAD.size <= len(data):
                wd, mask, _, size = _HEAD.unpack_from(data, at)
                at += _HEAD.size + size
                self._event(wd, mask)

    def _event(self, wd: int, mask: int) -> None:
        if mask & _IN_Q_OVERFLOW:
            for key in self._by_key:
                self._dirty[key] = EVERYTHING
            return
        owner = self._wds.get(wd)
        if owner is None:
            return
        key, rel = owner
        if mask & _IN_IGNORED:  # the folder is gone; its parent was told
            self._wds.pop(wd, None)
            self._by_key.get(key, {}).pop(rel, None)
            return
        dirty = self._dirty.get(key, set())
        if dirty is EVERYTHING:
            return
        if mask & _IN_MOVE_SELF or (mask & _IN_MOVED and mask & _IN_ISDIR):
            self._dirty[key] = EVERYTHING  # paths below a moved folder changed
            return
        if mask & _IN_DELETE_SELF:
            return
        dirty.add(rel)
        self._dirty[key] = dirty

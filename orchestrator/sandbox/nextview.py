"""The next call's overlay view, made between calls: its private folder, an
empty upper and work directory and (a root worker) the overlay mounted, so
a call over the same workspace as the last one only checks and takes it.

Why it is still the workspace as of the call: an overlay's lower layer is
the live workspace directory, read at each lookup, not a copy taken at
mount time. Nothing looks up a path through a ready view before its call
(it is mounted in the worker's own namespace, at a folder no other process
sees), so it holds no cached entry that a change to the workspace between
calls (the last call's changeset applied, a file tool's write) could leave
stale. What the mount does pin is the workspace *directory*: if the path
now names another directory (the workspace removed and made again), the
view is not taken. The mount resolves the path once; its device and inode
are read before and after, and again when a call takes it (the mount holds
that inode, so its number cannot be reused meanwhile).

One ready view per worker process, for the workspace of its last call: a
call over another workspace (or asking for another view) closes it and
makes its own, as without one. Made by the after-call thread (`aftercall`)
after the call's result is returned; a call finding none (the first, or
one right after the last) makes its own. Each is used by one call only: its
upper directory is the call's changeset. A worker killed with one ready
leaves an empty folder (`view.remove_stale_views`) and no mount (its mount
namespace went with it); a worker that exits unmounts and removes it.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from orchestrator.sandbox import aftercall
from orchestrator.sandbox.view import View, close_view, open_view, settle

__all__ = ["take", "refill", "drop"]

_Key = tuple[str, str | None, bool]  # workspace path, view base folder, mounted by the worker


@dataclass(frozen=True)
class _Ready:
    key: _Key
    ident: tuple[int, int]  # the workspace directory's (st_dev, st_ino) when mounted
    view: View


_lock = threading.Lock()
_ready: dict[int, _Ready] = {}  # worker pid -> its next call's view
_making: set[int] = set()  # worker pids whose next view is being made
_exit_hook: set[int] = set()


def _ident(workspace: Path) -> tuple[int, int]:
    st = os.stat(workspace)
    return st.st_dev, st.st_ino


def take(workspace: Path, base: str | None, inplace: bool) -> View | None:
    """The ready view over `workspace` (the same directory it was made
    over), or None; one made for anything else is closed."""
    with _lock:
        found = _ready.pop(os.getpid(), None)
    if found is None:
        return None
    try:
        same = found.key == (str(workspace), base, inplace) and _ident(workspace) == found.ident
    except OSError:
        same = False
    if not same:
        close_view(found.view)
        return None
    return found.view


def refill(workspace: Path, base: str | None, inplace: bool) -> None:
    """Make the next call's view over `workspace` in the after-call thread,
    unless one is ready or being made."""
    pid = os.getpid()
    with _lock:
        if pid in _making or pid in _ready:
            return
        _making.add(pid)
        if pid not in _exit_hook:
            _exit_hook.add(pid)
            atexit.register(drop)
    aftercall.later(lambda: _make(workspace, base, inplace))


def _make(workspace: Path, base: str | None, inplace: bool) -> None:
    pid = os.getpid()
    try:
        ident = _ident(workspace)
        view = open_view(workspace, "overlay", base, inplace)
        if _ident(workspace) != ident:  # replaced while it was mounted: not that one
            close_view(view)
            return
        with _lock:
            _ready[pid] = _Ready((str(workspace), base, inplace), ident, view)
    finally:
        with _lock:
            _making.discard(pid)


def drop() -> None:
    """Unmount and remove this worker's ready view, if any, once the one
    being made is done (at exit; tests)."""
    aftercall.settle()
    with _lock:
        found = _ready.pop(os.getpid(), None)
    if found is not None:
        close_view(found.view)
        settle()


def ready_view() -> Path | None:
    """The folder of this worker's ready view (tests)."""
    found = _ready.get(os.getpid())
    return None if found is None else Path(found.view.root)

"""The overlay mounted by the worker itself, in its own private mount
namespace, instead of by an `unshare` + `sh` + `mount` chain per call.

A root worker unshares its mount namespace once (`private_namespace()`;
mounts of the machine still propagate in, none of ours propagate out), then
mounts each call's overlay at a path in the call's private folder with one
mount(2) and unmounts it (detached) when the call ends: no process is
started for the view, so a call costs bubblewrap and the command alone.
bubblewrap, started by the worker, binds that mount at the workspace path.
A worker killed mid-call takes its namespace, and every overlay in it, with
it: nothing is left mounted and the workspace was never written.

Not available (the chain is used instead): a worker that is not root (its
namespace would need a user namespace of its own, which changes what its
uid means for everything else it does), a worker with threads (the kernel
refuses to unshare the mount namespace of a process whose threads share
its filesystem context), a kernel that refuses.
"""

from __future__ import annotations

import ctypes
import os
import threading

__all__ = ["private_namespace", "mounts_folder", "mount_overlay", "unmount"]

_CLONE_NEWNS = 0x00020000
_MS_REC, _MS_SLAVE = 0x4000, 0x80000
_MNT_DETACH = 2

_libc: ctypes.CDLL | None = None
_state: dict[int, str | None] = {}  # pid -> why the namespace is not ours (None: it is)
_mounts: dict[int, str] = {}  # pid -> the folder its overlays are mounted in
_lock = threading.Lock()


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def private_namespace(folder: str | None = None) -> str | None:
    """Put this process in a mount namespace of its own, once per process
    (a forked child asks again: its parent's answer is not its own); None
    when it is, else why not. `folder` (made here) is where its overlays
    are mounted (`mounts_folder()`)."""
    pid = os.getpid()
    with _lock:
        if pid in _state:
            return _state[pid]
        if folder is None:
            _state[pid] = "no folder for the overlays was given"
            return _state[pid]
        why: str | None = None
        if os.geteuid() != 0:
            why = "the worker is not root"
        elif threading.active_count() > 1:
            why = "the worker runs threads (the kernel refuses to unshare its mount namespace)"
        else:
            libc = _c()
            if libc.unshare(_CLONE_NEWNS) != 0:
                why = f"unshare(CLONE_NEWNS) failed: {os.strerror(ctypes.get_errno())}"
            elif libc.mount(b"none", b"/", None, _MS_REC | _MS_SLAVE, None) != 0:
                why = f"making / a slave mount failed: {os.strerror(ctypes.get_errno())}"
            else:
                why = _folder(folder)
        if why is None:
            _mounts[pid] = folder
        _state[pid] = why
        return why


def _folder(folder: str) -> str | None:
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as err:
        return f"cannot make {folder}: {err.strerror}"
    return None


def mounts_folder() -> str | None:
    """Where this process mounts its overlays (None: it does not)."""
    return _mounts.get(os.getpid())


def mount_overlay(lower: str, upper: str, work: str, target: str, options: str) -> None:
    """Mount an overlay at `target` (in this process's namespace), or OSError."""
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}{options}"
    if _c().mount(b"overlay", os.fsencode(target), b"overlay", 0, os.fsencode(opts)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mounting an overlay over {lower} failed: {os.strerror(err)}")


def unmount(target: str) -> None:
    """Detach the mount at `target` (its last user gone, it is freed)."""
    _c().umount2(os.fsencode(target), _MNT_DETACH)

"""Ctrl-C on a broker without remote control: find and kill the Celery pool
process a chat's tool call runs in, and every process it started, as
`revoke(terminate=True)` would. Read from /proc, so Linux only."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["terminate_task_process"]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                children.setdefault(st[1], []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def _is_pool_process(pid: int) -> bool:
    """A Celery pool process: a celery worker whose parent is one too (never
    the worker's main process)."""
    st = _stat(pid)
    if st is None:
        return False
    own, parent = _cmdline(pid), _cmdline(st[1])
    return all(b"celery" in c and b"worker" in c for c in (own, parent))


def _in_workspace(pid: int, workspace: str) -> bool:
    """Whether a process works in the workspace: bubblewrap names it in its
    arguments, and every process of a call starts in it."""
    if os.fsencode(workspace) in _cmdline(pid):
        return True
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return cwd == workspace or cwd.startswith(workspace.rstrip("/") + "/")


def terminate_task_process(
    actor: str,
    workspace: str,
    still_running: Callable[[], bool],
    hostname: str | None = None,
    wait_s: float = 5.0,
) -> bool:
    """Kill the worker process a tool call runs in (what `revoke(terminate=True)`
    does), found by the actor of the events it appended (`worker:HOST:PID`),
    and every process it started: the sandbox's bubblewrap dies with its
    parent and takes the command's whole pid namespace with it; in the
    fallback sandbox the command's process group is killed here.

    Only a Celery pool process on this host, running a process in the
    session's workspace, while `still_running()`: a pool process that has
    moved on to other work is left alone."""
    kind, _, rest = actor.partition(":")
    host, _, pid_text = rest.rpartition(":")
    if kind != "worker" or host != (hostname or socket.gethostname()) or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if not _is_pool_process(pid):
        return False
    tree = _descendants(pid)
    if not any(_in_workspace(t, workspace) for t in tree):
        return False
    if not still_running():  # re-checked last: the call may have ended meanwhile
        return False
    for target in (pid, *tree):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)
    for target in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(target, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while any(_alive(t) for t in (pid, *tree)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return True

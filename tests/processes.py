"""Finding processes a sandboxed command left behind, and making the servers
and workers a test starts die with the test run (for the tests)."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def running(token: str) -> list[int]:
    """Live processes whose command line holds `token`. The sandbox gives the
    command its own pid namespace, so pids it writes down mean nothing here."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if token.encode() in (entry / "cmdline").read_bytes() and alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def dies_with_us() -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen`: the child gets SIGTERM (a Celery
    worker's warm shutdown, a server's clean stop) when the test process
    dies, even by kill -9, so an interrupted run leaves no workers polling
    the brokers. The kernel ties it to the forking thread, so only the main
    thread (where tests run) asks for it; None elsewhere."""
    if threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def arm() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the test process died before prctl ran
            os.kill(os.getpid(), signal.SIGTERM)

    return arm

"""Clean-up a call's caller does not wait for: removing its (already
emptied) cgroups and throwaway home, making the next call's standby.

A call's result does not depend on these, and no later call needs them
done first (each call has cgroups of its own; a call finding no standby
ready makes its own), so `later()` hands them to one thread of the worker
and the call returns. The sweep (no process of the call left) is not one of
them: it stays on the call's path. The queue runs in order, so a clean-up
never overlaps the one before it; `settle()` waits for what was handed over
so far, and runs at exit (atexit), so a worker leaves nothing of its own
calls behind when it stops. A worker killed first leaves empty cgroups,
which the next probe removes (`host._remove_stale`).
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
from collections.abc import Callable

__all__ = ["later", "settle"]

_jobs: queue.SimpleQueue[Callable[[], None] | threading.Event] = queue.SimpleQueue()
_threads: dict[int, threading.Thread] = {}  # pid -> its thread (a forked child starts its own)
_lock = threading.Lock()


def later(job: Callable[[], None]) -> None:
    """Run `job` in this process's clean-up thread, after those before it."""
    _jobs.put(job)
    pid = os.getpid()
    if pid in _threads:
        return
    with _lock:
        if pid not in _threads:
            thread = threading.Thread(target=_run, name="sandbox-aftercall", daemon=True)
            _threads[pid] = thread
            thread.start()
            atexit.register(settle)


def settle(timeout_s: float = 10.0) -> None:
    """Wait until every clean-up handed over so far is done (tests; exit)."""
    if os.getpid() not in _threads:
        return
    done = threading.Event()
    _jobs.put(done)
    done.wait(timeout_s)


def _run() -> None:
    while True:
        job = _jobs.get()
        if isinstance(job, threading.Event):
            job.set()
            continue
        try:
            job()
        except Exception:  # noqa: BLE001 - one failed clean-up must not stop the next ones
            pass

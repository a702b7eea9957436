"""Starting and finding worker processes for the CLI.

`orchestrator run` starts a worker when none is running: on the embedded
broker it looks for the worker's pidfile in the state folder; on a server
broker it asks running workers to answer a ping. A worker it started itself
is stopped (warm shutdown) when the run ends, unless asked to keep it
(`StartedWorker`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.config.settings import Settings


def pidfile(settings: Settings) -> Path:
    return settings.state / "worker.pid"


def logfile(settings: Settings) -> Path:
    return settings.state / "worker.log"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def embedded_worker_pid(settings: Settings) -> int | None:
    try:
        pid = int(pidfile(settings).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def worker_command(
    settings: Settings, *, concurrency: int | None = None, detach_files: bool = True
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.app",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency or settings.worker_concurrency),
        "--queues",
        "orchestrator",
        "--loglevel",
        settings.log_level,
        "--hostname",
        f"orchestrator-{os.getpid()}@%h",
        "--without-mingle",
        "--without-gossip",
    ]
    if detach_files:
        cmd += ["--pidfile", str(pidfile(settings)), "--logfile", str(logfile(settings))]
    return cmd


def worker_env(settings: Settings) -> dict[str, str]:
    """The worker's environment: ours, plus prometheus-client's multiprocess
    folder (read by the library when first imported, so it must be there
    before the worker starts; orchestrator.ops.metrics explains)."""
    env = dict(os.environ)
    if "prometheus" in settings.metrics_reporters and "PROMETHEUS_MULTIPROC_DIR" not in env:
        from orchestrator.ops.metrics import prepare_dir

        env["PROMETHEUS_MULTIPROC_DIR"] = str(prepare_dir(settings.effective_metrics_dir))
    return env


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    """A real Celery worker process on the project's app, logging to the state folder."""
    settings.state.mkdir(parents=True, exist_ok=True)
    stale = pidfile(settings)
    if stale.exists() and embedded_worker_pid(settings) is None:
        stale.unlink()
    env = {**worker_env(settings), "ORCH_STATE_DIR": str(settings.state)}
    return subprocess.Popen(
        worker_command(settings),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(logfile(settings), "ab"),
        start_new_session=True,
    )


def server_worker_running(ping: Callable[[], list[object]]) -> bool:
    try:
        return bool(ping())
    except Exception:
        return False


def request_stop(proc: subprocess.Popen[bytes]) -> None:
    """Begin the worker's warm shutdown (it finishes its current tasks)
    without waiting for it: `stop_worker` waits."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)


def stop_worker(
    proc: subprocess.Popen[bytes], timeout_s: float = 30.0, *, requested: bool = False
) -> None:
    """Warm shutdown (finish current tasks), then kill if it will not stop.
    `requested`: `request_stop` began it already (Celery would run its
    shutdown handlers again on a second SIGTERM)."""
    if proc.poll() is not None:
        return
    if not requested:
        request_stop(proc)
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class StartedWorker:
    """The worker a command started (`proc`; None when one was running
    already), stopped when the `with` block ends unless `keep`.

    `wind_down()` begins its warm shutdown early, once the work it was
    started for has ended: the 1.4-2.3 s it takes (billiard's supervisor and
    timeout threads wake every 0.8 and 1 s) then overlap what the command
    prints, and leaving the block waits only for what is left of it."""

    def __init__(self, proc: subprocess.Popen[bytes] | None = None, *, keep: bool = False) -> None:
        self.proc, self.keep, self._requested = proc, keep, False

    def wind_down(self) -> None:
        if self.proc is not None and not self.keep and not self._requested:
            request_stop(self.proc)
            self._requested = True

    def __enter__(self) -> StartedWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and not self.keep:
            stop_worker(self.proc, requested=self._requested)

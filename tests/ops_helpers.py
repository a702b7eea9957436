"""Real servers and workers for the operations tests (probes, readiness, Flower, smoke).

The private Redis and PostgreSQL servers here belong to the test that starts
them: it may stop and restart them at will, while the shared servers on 6379
and 5432 stay up for everyone else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import ROOT
from tests.processes import dies_with_us

REDIS_SERVER = "/usr/bin/redis-server"
PG_BIN = Path("/usr/local/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    what: str, predicate: Callable[[], Any], timeout: float = 60.0, every: float = 0.2
) -> Any:
    """`predicate()`'s first truthy value; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - keep polling, show the last problem
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    pytest.fail(f"gave up waiting for {what} after {timeout:g} s (last: {last!r})")


def get(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, parsed JSON or text) of a GET; (0, error) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, body = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def start_worker(env: dict[str, str], log: Path, name: str = "probe") -> subprocess.Popen[bytes]:
    """A real Celery worker on the project's app (prefork, 1 process), in a
    process group of its own."""
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
        "1",
        "--queues",
        "orchestrator",
        "--loglevel",
        "INFO",
        "--hostname",
        f"{name}-{os.getpid()}@%h",
        "--without-mingle",
        "--without-gossip",
    ]
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=dies_with_us(),
    )


def stop(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM (warm shutdown), then SIGKILL for the whole group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


class PrivateRedis:
    """A redis-server of this test's own on a free port, no persistence."""

    def __init__(self) -> None:
        if not Path(REDIS_SERVER).exists():
            pytest.skip(f"{REDIS_SERVER} is not installed")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=dies_with_us(),
        )
        import redis

        wait_until(
            "the private redis-server",
            lambda: redis.Redis(port=self.port, socket_connect_timeout=1).ping(),
            timeout=20,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own: initdb'd into a temporary
    folder as the `postgres` OS user (initdb refuses root), on a free port."""

    def __init__(self, listen: tuple[str, ...] = ()) -> None:
        if not (PG_BIN / "initdb").exists():
            pytest.skip("PostgreSQL's initdb is not installed")
        self.listen = ("127.0.0.1", *listen)  # addresses it listens on
        self.port = free_port()
        # Not under pytest's tmp_path: its parents are closed to other users.
        self.dir = Path(tempfile.mkdtemp(prefix="orch-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(
            PG_BIN / "initdb",
            "-D",
            self.data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )

    @property
    def data(self) -> str:
        return str(self.dir / "data")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *cmd: object) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [*prefix, *map(str, cmd)], capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            pytest.fail(f"{cmd[0]} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        self._as_postgres(
            PG_BIN / "pg_ctl",
            "-D",
            self.data,
            "-l",
            self.dir / "log",
            "-w",
            "-t",
            "30",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses={','.join(self.listen)} "
            "-c fsync=off",
            "start",
        )

    def stop(self) -> None:
        self._as_postgres(
            PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "30", "stop"
        )

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()

"""Running the real API (uvicorn) and a real worker from tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.cli_helpers import ROOT
from tests.processes import dies_with_us

TOKENS = {
    role: f"test-{role}-token-0123456789" for role in ("submitter", "operator", "auditor", "admin")
}


def tokens_setting() -> str:
    return json.dumps(
        [
            {
                "principal": role[:3] if role != "admin" else "root",
                "roles": [role],
                "sha256": hashlib.sha256(token.encode()).hexdigest(),
            }
            for role, token in TOKENS.items()
        ]
    )


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def api_env(env: dict[str, str], workspace: Path) -> dict[str, str]:
    return {
        **env,
        "ORCH_API_TOKENS": tokens_setting(),
        "ORCH_API_WORKSPACE_ROOT": str(workspace),
        "ORCH_API_SSE_POLL_S": "0.05",
        "ORCH_WORKER_HEARTBEAT_INTERVAL_S": "1",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def api_server(env: dict[str, str], log: Path) -> Iterator[str]:
    """`orchestrator api` on a free port; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli.main",
            "api",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=ROOT,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=dies_with_us(),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the API did not start: " + log.read_text()
            time.sleep(0.1)
        yield base
    finally:
        _stop(proc)


@contextlib.contextmanager
def worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`orchestrator worker` (a real Celery worker) until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "worker"],
        env=env,
        cwd=ROOT,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=dies_with_us(),
    )
    try:
        yield proc
    finally:
        _stop(proc)


def wait_for(check, timeout: float = 120, every: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)

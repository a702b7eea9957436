"""kill -9 a worker in the middle of a job: after a new worker starts, the job
completes, and the event log has no gap, no duplicate and a valid chain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from events.store import SqlEventStore
from events.verify import verify_rows
from orchestrator.run.runner import job_state
from tests.cli_helpers import cli, shape_env
from tests.processes import dies_with_us

pytestmark = pytest.mark.slow

SPEC = """
name: crash-test
targets: ["repos/*"]
steps:
  - kind: shell
    name: slow-check
    command: python3 -c "import time; time.sleep(1.0)"
    idempotent: true
  - kind: replace
    pattern: 'old_name'
    replacement: new_name
    expect: {min: 1}
  - kind: shell
    name: verify
    command: python3 -c "import pathlib, sys; sys.exit('old_name' in pathlib.Path('mod.py').read_text())"
    idempotent: true
"""


def _worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "worker", "-c", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=dies_with_us(),
    )


def _stop(worker: subprocess.Popen[bytes]) -> None:
    """Warm shutdown, then kill: what is tested is the job, not how fast the
    worker drains duplicate deliveries the crash left behind."""
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)


def test_job_survives_kill_9_of_its_worker(tmp_path: Path):
    for i in range(4):
        repo = tmp_path / "repos" / f"r{i}"
        repo.mkdir(parents=True)
        (repo / "mod.py").write_text("def old_name():\n    return 1\n\nold_name()\n")
    (tmp_path / "job.yaml").write_text(SPEC)
    # A short visibility timeout so the dead worker's messages come back quickly.
    env = shape_env(tmp_path, ORCH_VISIBILITY_TIMEOUT_S="4")
    submitted = cli(env, "submit", str(tmp_path / "job.yaml"), "--base-dir", str(tmp_path))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    store = SqlEventStore(f"sqlite:///{tmp_path / 'state' / 'events.sqlite'}")

    first = _worker(env)
    deadline = time.monotonic() + 60
    while not any(e.type == "ToolCallStarted" for e in store.read_correlation(job_id)):
        assert time.monotonic() < deadline, "the first worker never started a step"
        time.sleep(0.05)
    time.sleep(0.3)  # mid-step: the sleep is running
    os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool children
    first.wait()

    second = _worker(env)
    try:
        deadline = time.monotonic() + 120
        while job_state(store, job_id).status == "running":
            assert time.monotonic() < deadline, "the job did not complete after restart"
            time.sleep(0.2)
    finally:
        _stop(second)

    job = job_state(store, job_id)
    assert job.status == "completed", job
    assert verify_rows(store.rows()).ok
    events = list(store.read_correlation(job_id))
    per_stream = Counter((e.stream_id, e.seq) for e in events)
    assert max(per_stream.values()) == 1  # no duplicates
    for ref in job.sessions:
        seqs = sorted(e.seq for e in events if e.stream_id == ref.session_id)
        assert seqs == list(range(1, len(seqs) + 1))  # no gaps
        done = Counter(
            e.payload.call_id
            for e in events
            if e.stream_id == ref.session_id and e.type == "ToolCallCompleted"
        )
        assert sorted(done.values()) == [1, 1, 1]  # each step once
    for i in range(4):
        assert (
            tmp_path / "repos" / f"r{i}" / "mod.py"
        ).read_text() == "def new_name():\n    return 1\n\nnew_name()\n"

"""A worker's main process killed (kill -9 of its whole process group) mid-step
on a Redis broker whose visibility timeout is an hour: the other worker sees
the dead one's heartbeat go stale, claims its in-flight record and
re-enqueues the session from the step it was on; the job completes, each
step recorded once. Default heartbeat settings (10 s beats, 30 s max age):
the redelivery must come within 120 s of the kill (the target is under 60 s;
the bound is generous for a loaded machine). The time is printed. On
RabbitMQ the broker itself hands the message back as soon as the dead
worker's connection drops; the heartbeats change nothing there."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.store import SqlEventStore
from orchestrator.run.runner import job_state
from tests.cli_helpers import cli, shape_env
from tests.ops_helpers import private_redis, start_worker, stop, wait_until

pytestmark = [pytest.mark.slow]

SPEC = """
name: lost-worker
targets: ["repo"]
steps:
  - kind: shell
    name: slow
    command: python3 -c "import time, pathlib; time.sleep(15); pathlib.Path('out.txt').write_text('done')"
    idempotent: true
"""


def _running_it(state: Path, session_id: str) -> str | None:
    """The hostname whose in-flight record lists the session."""
    for path in (state / "inflight").glob("*.json"):
        try:
            beat = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if any(a.endswith("/" + session_id) for a in beat.get("active", ())):
            return str(beat["hostname"])
    return None


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "redis":
        with private_redis() as redis:
            yield redis.url
    else:
        yield request.getfixturevalue("rabbitmq_url")


def test_a_killed_workers_step_is_redelivered_from_its_heartbeat(
    tmp_path: Path, broker: str
) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "README").write_text("x\n")
    (tmp_path / "job.yaml").write_text(SPEC)
    env = shape_env(tmp_path, broker_url=broker)
    workers = {
        name: start_worker(env, tmp_path / f"{name}.log", name=name) for name in ("wa", "wb")
    }
    try:
        submitted = cli(env, "submit", str(tmp_path / "job.yaml"), "--base-dir", str(tmp_path))
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        store = SqlEventStore(f"sqlite:///{tmp_path / 'state' / 'events.sqlite'}")
        session_id = job_state(store, job_id).sessions[0].session_id
        host = wait_until(
            "a worker's in-flight record to list the session",
            lambda: _running_it(tmp_path / "state", session_id),
            timeout=120,
        )
        victim = next(n for n in workers if host.startswith(n + "-"))
        survivor = next(n for n in workers if n != victim)
        os.killpg(workers[victim].pid, signal.SIGKILL)
        killed = time.monotonic()
        workers[victim].wait(30)
        log = tmp_path / f"{survivor}.log"
        wait_until(
            "the survivor to receive the dead worker's step",
            lambda: "orchestrator.run_step[" in log.read_text(),
            timeout=120,
            every=0.5,
        )
        redelivered = time.monotonic() - killed
        print(f"\n{broker.split(':')[0]}: step redelivered {redelivered:.1f} s after kill -9")
        wait_until(
            "the job to complete on the survivor",
            lambda: job_state(store, job_id).status == "completed",
            timeout=180,
        )
    finally:
        for proc in workers.values():
            stop(proc)
    events = list(store.read_correlation(job_id))
    assert [e.type for e in events].count("ToolCallCompleted") == 1
    assert (tmp_path / "repo" / "out.txt").read_text() == "done"
    store.close()

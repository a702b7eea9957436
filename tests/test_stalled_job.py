"""A broker that loses messages: Redis restarted without persistence after a
job was enqueued. The job's sessions have no task and make no progress:
`status`, `health` and the `orch_jobs_stalled` gauge say `stalled`, and
`orchestrator resume JOB` re-enqueues them from the store's own record, after
which the job completes. Resuming is idempotent, and refused once it is done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis as redis_client

from events.store import SqlEventStore
from orchestrator.config.settings import Settings
from orchestrator.ops import metrics
from orchestrator.run.runner import job_state
from tests.cli_helpers import cli, shape_env
from tests.ops_helpers import private_redis, start_worker, stop, wait_until

pytestmark = [pytest.mark.slow]

SPEC = """
name: lost
targets: ["repos/*"]
steps:
  - kind: shell
    name: touch
    command: python3 -c "import pathlib; pathlib.Path('out.txt').write_text('done')"
"""


def test_a_job_whose_messages_were_lost_is_stalled_then_resumed(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / "repos" / name).mkdir(parents=True)
        (tmp_path / "repos" / name / "README").write_text("x\n")
    (tmp_path / "job.yaml").write_text(SPEC)
    with private_redis() as redis:
        env = shape_env(tmp_path, broker_url=redis.url, ORCH_STALL_AFTER_S="2")
        submitted = cli(env, "submit", str(tmp_path / "job.yaml"), "--base-dir", str(tmp_path))
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        redis.stop()  # no persistence: the job's messages are gone
        redis.start()
        worker = start_worker(env, tmp_path / "worker.log", name="stall")
        try:

            def reported_stalled() -> object:
                st = json.loads(cli(env, "status", job_id, "--json").stdout)
                return st["status"] == "running" and st["stalled"]

            stall = wait_until("status to say stalled", reported_stalled, timeout=120)
            assert stall["unfinished_sessions"] == 3
            health = json.loads(cli(env, "health", "--json").stdout)
            assert "jobs" in health["failed"], health
            jobs = next(c for c in health["checks"] if c["name"] == "jobs")
            assert job_id in jobs["detail"] and "resume" in jobs["remedy"]
            settings = Settings(state_dir=tmp_path / "state", broker_url=redis.url, stall_after_s=2)
            assert [s.job_id for s in metrics.jobs_stalled(settings)] == [job_id]

            # From another folder: never-started sessions resolve from --base-dir.
            resumed = cli(env, "resume", job_id, "--base-dir", str(tmp_path), "--json")
            assert resumed.returncode == 0, resumed.stderr
            assert len(json.loads(resumed.stdout)["resumed"]) == 3
            again = cli(env, "resume", job_id, "--base-dir", str(tmp_path))  # a duplicate
            assert again.returncode in (0, 2), again.stderr
            store = SqlEventStore(f"sqlite:///{tmp_path / 'state' / 'events.sqlite'}")
            wait_until(
                "the resumed job to complete",
                lambda: job_state(store, job_id).status == "completed",
                timeout=180,
            )
        finally:
            stop(worker)
        events = list(store.read_correlation(job_id))
        assert [e.type for e in events].count("ToolCallCompleted") == 3  # no step twice
        assert [e.type for e in events].count("JobCompleted") == 1
        for name in ("a", "b", "c"):
            assert (tmp_path / "repos" / name / "out.txt").read_text() == "done"
        done = cli(env, "resume", job_id)
        assert done.returncode == 2 and "nothing to resume" in done.stderr, done
        status = json.loads(cli(env, "status", job_id, "--json").stdout)
        assert status["stalled"] is None
        store.close()


def test_doctor_warns_when_the_redis_broker_does_not_persist(tmp_path: Path) -> None:
    with private_redis() as redis:  # started with --appendonly no
        env = shape_env(tmp_path, broker_url=redis.url)
        by = {c["name"]: c for c in json.loads(cli(env, "doctor", "--json").stdout)["checks"]}
        assert by["broker"]["status"] == "warn", by["broker"]
        assert "appendonly no" in by["broker"]["detail"]
        redis_client.Redis(port=redis.port).config_set("appendonly", "yes")
        by = {c["name"]: c for c in json.loads(cli(env, "doctor", "--json").stdout)["checks"]}
        assert by["broker"]["status"] == "ok" and "AOF" in by["broker"]["detail"], by["broker"]

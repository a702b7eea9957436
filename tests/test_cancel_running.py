"""Cancel reaches running work: `orchestrator cancel` stops a shell step
that is running on a real worker (embedded broker and store) within a few
seconds, kills its whole process group, and records it; the job, cancelled
during its last step, ends `cancelled` with the reason."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.cli_helpers import cli, shape_env
from tests.ops_helpers import start_worker, stop, wait_until
from tests.processes import running

pytestmark = pytest.mark.slow


def test_cancel_stops_a_running_step_and_the_job_ends_cancelled(tmp_path: Path) -> None:
    # A duration no other process on the machine uses: it finds the command.
    marker = f"{random.randint(300, 900)}.{random.randint(10**5, 10**6 - 1)}"
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "a.txt").write_text("a\n")
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"""\
name: long
tier: exec
targets: [ws]
steps:
  - {{kind: read, name: look, path: a.txt}}
  - {{kind: shell, name: wait, command: [sh, -c, "sleep {marker} & sleep {marker}; wait"]}}
"""
    )
    env = shape_env(tmp_path)
    submitted = cli(env, "submit", str(spec), "--base-dir", str(tmp_path), "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    worker = start_worker(env, tmp_path / "worker.log", name="cancel")
    try:
        wait_until("the step's processes", lambda: len(running(marker)) >= 2, timeout=120)
        done = cli(env, "cancel", job_id, "--reason", "wrong branch", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["running"], done.stdout

        def ended() -> dict[str, object] | None:
            status = cli(env, "status", job_id, "--json")
            view = json.loads(status.stdout)
            return view if view["status"] != "running" else None

        view = wait_until("the job's end", ended, timeout=60, every=0.5)
        assert not running(marker), "the step's process group was not killed"
    finally:
        stop(worker)
    assert view["status"] == "cancelled"
    assert view["cancel"] == {"by": view["cancel"]["by"], "reason": "wrong branch"}
    [session] = view["sessions"]
    assert session["status"] == "failed"
    assert session["error"].startswith("JobCancelled: step 2 (wait) failed")
    assert "cancelled by" in session["error"] and "wrong branch" in session["error"]
    log = (tmp_path / "worker.log").read_text()
    assert "raised unexpected" not in log and "StepFailed" not in log  # asked for: no alert

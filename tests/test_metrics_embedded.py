"""On an embedded deployment (no servers, one state folder) the API's
/metrics shows what the workers of the same state folder recorded, with no
variable to set: a real worker runs a job, then `orchestrator api` is
scraped."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.api_helpers import api_env, api_server, wait_for, worker
from tests.cli_helpers import cli, shape_env

pytestmark = pytest.mark.slow

SPEC = """\
name: look
targets: [ws]
steps:
  - {kind: search, name: look, pattern: x}
"""


def test_the_apis_metrics_show_the_workers_of_its_state_folder(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "a.py").write_text("x = 1\n")
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC)
    env = api_env(shape_env(tmp_path, ORCH_API_METRICS_PUBLIC="true"), tmp_path)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    submitted = cli(env, "submit", str(spec), "--base-dir", str(tmp_path), "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    with worker(env, tmp_path / "worker.log"):
        wait_for(
            lambda: (
                json.loads(cli(env, "status", job_id, "--json").stdout)["status"] == "completed"
            ),
            timeout=120,
            every=0.5,
        )
        with api_server(env, tmp_path / "api.log") as base:
            text = httpx.get(base + "/metrics", timeout=30).text
    assert 'orch_tool_call_seconds_count{outcome="ok",tool="search"} 1.0' in text, text[:2000]

"""`orchestrator smoke` end to end on both deployment shapes (with a running
API's probes), and failing on a broker nobody listens on."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.ops.smoke import Row, exit_code
from tests.cli_helpers import ROOT, cli, shape_env
from tests.ops_helpers import free_port, get, stop, wait_until
from tests.processes import dies_with_us

REDIS_DB = 3
ROWS = [
    "broker",
    "store",
    "job",
    "result",
    "replay",
    "verify",
    "workers",
    "api /healthz",
    "api /readyz",
]


def test_exit_code_is_zero_four_for_infrastructure_else_one() -> None:
    ok, job = Row("job", True, ""), Row("verify", False, "broken link")
    down = Row("broker", False, "no answer", "start it", infra=True)
    assert [exit_code([ok]), exit_code([ok, job]), exit_code([job, down])] == [0, 1, 4]


@pytest.fixture
def api(deployment_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """The real HTTP API on this deployment, on a free port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "api", "--port", str(port)],
        env=deployment_env,
        cwd=ROOT,
        stdout=open(tmp_path / "api.log", "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=dies_with_us(),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until("the API", lambda: get(base + "/healthz")[0] == 200, timeout=60)
        yield base
    finally:
        stop(proc)


@pytest.mark.slow
def test_smoke_passes_on_a_healthy_deployment(deployment_env, api) -> None:
    result = cli(deployment_env, "smoke", "--json", "--api", api, timeout=300)
    report = json.loads(result.stdout)
    assert result.returncode == 0, json.dumps(report, indent=1) + result.stderr
    assert [c["name"] for c in report["checks"]] == ROWS
    assert report["failed"] == [] and report["job_id"]
    # The job it ran is an ordinary, recorded job.
    status = cli(deployment_env, "status", report["job_id"], "--json")
    assert json.loads(status.stdout)["status"] == "completed"


def test_smoke_on_a_closed_broker_port_exits_4_naming_the_broker(tmp_path: Path) -> None:
    env = shape_env(tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/{REDIS_DB}")
    result = cli(env, "smoke", "--json", timeout=120)
    assert result.returncode == 4, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["failed"] == ["broker", "job"]
    broker = report["checks"][0]
    assert broker["name"] == "broker" and "no answer to PING" in broker["detail"]
    assert "start the broker" in broker["remedy"]
    table = cli(env, "smoke", timeout=120)
    assert table.returncode == 4
    assert "FAIL" in table.stdout and "start the broker" in " ".join(table.stdout.split())

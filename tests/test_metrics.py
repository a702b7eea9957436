"""Metrics: what a job's tool calls leave in a real prefork worker's
multiprocess folder, read back through `metrics.exposition()`; the stdout
reporter's lines; and the facade with no reporter at all."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.ops import metrics
from orchestrator.run.sample_repos import create_sample_repos
from tests.cli_helpers import ROOT, cli, shape_env

EXAMPLE = ROOT / "orchestrator" / "examples" / "rename-function.yaml"


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, from the Prometheus text format."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def exposition_of(env: dict[str, str]) -> tuple[str, str]:
    """`metrics.exposition()` in a process of its own, as the API or the
    worker's probe would call it."""
    code = (
        "import sys; from orchestrator.config.settings import get_settings; "
        "from orchestrator.ops import metrics; body, ctype = metrics.exposition(get_settings()); "
        "sys.stdout.write(ctype + '\\n' + body.decode())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    ctype, body = result.stdout.split("\n", 1)
    return ctype, body


@pytest.mark.slow
def test_a_prefork_workers_tool_calls_add_up_across_its_children(tmp_path: Path):
    create_sample_repos(tmp_path / "sample-repos", count=3)
    env = shape_env(tmp_path, ORCH_WORKER_CONCURRENCY="2")
    result = cli(env, "run", str(EXAMPLE), "--base-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "state" / "metrics"
    pids = {f.stem.rsplit("_", 1)[1] for f in folder.glob("histogram_*.db")}
    assert pids, "the worker's children wrote no multiprocess files"

    ctype, body = exposition_of({**env, "PROMETHEUS_MULTIPROC_DIR": str(folder)})
    assert ctype.startswith("text/plain")
    got = samples(body)
    # 3 sessions x (replace, search, shell): summed over every child that ran one.
    assert got['orch_tool_call_seconds_count{outcome="ok",tool="replace"}'] == 3
    assert got['orch_tool_call_seconds_count{outcome="ok",tool="search"}'] == 3
    assert (
        sum(
            v
            for k, v in got.items()
            if k.startswith("orch_permission_decisions_total") and 'decision="allow"' in k
        )
        == 9
    )
    assert got["orch_events_appended_total"] > 9 * 3
    assert got["orch_event_append_seconds_count"] > 0
    # Computed when scraped: nothing waits, nothing is queued any more.
    assert got["orch_confirmations_waiting"] == 0
    assert got['orch_queue_depth{queue="orchestrator"}'] == 0


def test_scraping_a_process_without_a_folder_shows_its_own_metrics_and_the_gauges(tmp_path):
    env = shape_env(tmp_path)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    _, body = exposition_of(env)
    got = samples(body)
    assert got["orch_confirmations_waiting"] == 0  # no store yet: nothing waits
    assert got['orch_queue_depth{queue="orchestrator"}'] == 0


def test_the_stdout_reporter_writes_totals_as_json_lines():
    buf = io.StringIO()
    r = metrics.StdoutReporter(3600, buf)
    m = metrics.METRICS
    r.record(m["orch_tool_call_seconds"], ("read", "ok"), 0.25)
    r.record(m["orch_tool_call_seconds"], ("read", "ok"), 0.5)
    r.record(m["orch_model_tokens_total"], ("gpt-x", "input"), 120)
    r.record(m["orch_model_tokens_total"], ("gpt-x", "input"), 30)
    r.record(m["orch_browser_pool"], ("idle",), 2)
    r.record(m["orch_browser_pool"], ("idle",), 1)
    r.shutdown()
    rows = [json.loads(line) for line in buf.getvalue().splitlines()]
    by = {(x["metric"], tuple(x["labels"].values())): x for x in rows}
    call = by[("orch_tool_call_seconds", ("read", "ok"))]
    assert (call["kind"], call["count"], call["sum"]) == ("histogram", 2, 0.75)
    assert call["labels"] == {"tool": "read", "outcome": "ok"}
    assert by[("orch_model_tokens_total", ("gpt-x", "input"))]["value"] == 150
    assert by[("orch_browser_pool", ("idle",))]["value"] == 1


def test_the_stdout_reporter_configured_by_settings_prints_when_the_process_ends(tmp_path):
    code = (
        "from orchestrator.ops import metrics; from orchestrator.config.settings import get_settings; "
        "metrics.setup(get_settings()); metrics.tool_call('shell', 'error', 1.5); "
        "metrics.quota_denied('shell', 'quota:tool_calls')"
    )
    env = {**shape_env(tmp_path), "ORCH_METRICS_REPORTERS": '["stdout"]'}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(x["metric"], x.get("count", x.get("value"))) for x in rows} == {
        ("orch_tool_call_seconds", 1),
        ("orch_quota_denials_total", 1),
    }

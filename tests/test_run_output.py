"""`run` as people and scripts see it, through a real worker (embedded):
one last line of counts (the same numbers in --json), whole table rows when
stdout is a pipe, no JSON log line on stderr beside human output, and only
JSON on stdout with --json even when spans are printed (to stderr)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_helpers import cli, shape_env, with_env

pytestmark = pytest.mark.slow

LONG = "a-target-with-a-rather-long-name-that-would-not-fit-in-eighty-columns"
SPEC = f"""\
name: counts
targets: [{LONG}, missing]
steps:
  - {{kind: search, name: look, pattern: x}}
"""


@pytest.fixture
def job(tmp_path: Path) -> Path:
    (tmp_path / LONG).mkdir()
    (tmp_path / LONG / "a.py").write_text("x = 1\n")
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC)
    return spec


def test_run_ends_with_its_counts_and_keeps_table_rows_whole_in_a_pipe(tmp_path, job) -> None:
    env = shape_env(tmp_path)
    env.pop("COLUMNS", None)
    result = cli(env, "run", str(job), "--base-dir", str(tmp_path), "--timeout", "180")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines[-1] == "1 succeeded, 1 failed, 0 waiting"
    row = next(line for line in lines if LONG in line)
    assert "completed" in row and "1/1" in row  # one line, not folded at 80 columns
    failed = next(line for line in lines if "missing" in line and "failed" in line)
    assert "TargetNotFound" in failed and "resubmit" in failed
    assert not [line for line in result.stderr.splitlines() if line.lstrip().startswith("{")]
    # The worker run started (its warm shutdown begun before the summary
    # was printed) has exited by the time run returns.
    assert with_env(f"ORCH_STATE_DIR={env['ORCH_STATE_DIR']}") == []


def test_run_json_holds_only_json_with_its_counts_while_spans_go_to_stderr(tmp_path, job) -> None:
    env = shape_env(tmp_path, ORCH_TRACE_EXPORTER="console")
    result = cli(env, "run", str(job), "--base-dir", str(tmp_path), "--json", "--timeout", "180")
    assert result.returncode == 1, result.stdout + result.stderr
    got = json.loads(result.stdout)  # nothing else on stdout
    assert got["counts"] == {"succeeded": 1, "failed": 1, "waiting": 0, "running": 0}
    assert '"trace_id"' in result.stderr  # the console exporter's spans

"""A job with more targets than MIN_TASKS_PER_STEP and only file steps runs as
chunks (several sessions per task): each session still has its own stream,
its own events and keys, and a missing target still fails alone."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from events.store import SqlEventStore
from events.verify import verify_rows
from orchestrator.run.runner import Runner, Ticket
from orchestrator.run.steps import SearchStep
from tasks.dispatch import MIN_TASKS_PER_STEP, chunk_size
from tests.cli_helpers import cli, shape_env
from tests.conftest import sqlite_store

SPEC = """
name: chunked
targets: ["repos/*", "no-such-repo"]
steps:
  - kind: replace
    pattern: '\\bold_name\\b'
    replacement: new_name
    expect: {min: 1}
  - kind: search
    pattern: old_name
    literal: true
    expect: 0
"""


@pytest.mark.slow
def test_many_targets_run_in_chunks_with_a_stream_per_session(tmp_path: Path):
    n = MIN_TASKS_PER_STEP + 9
    for i in range(n):
        repo = tmp_path / "repos" / f"r{i:02d}"
        repo.mkdir(parents=True)
        (repo / "mod.py").write_text("def old_name():\n    return 1\n\nold_name()\n")
    (tmp_path / "job.yaml").write_text(SPEC)
    env = shape_env(tmp_path)
    result = cli(env, "run", str(tmp_path / "job.yaml"), "--base-dir", str(tmp_path), "--json")
    assert result.returncode == 1, result.stderr  # the missing target fails the job
    job = json.loads(result.stdout)
    by_target = {s["target"]: s for s in job["sessions"]}
    assert "does not exist" in by_target.pop("no-such-repo")["error"]
    assert len(by_target) == n and {s["status"] for s in by_target.values()} == {"completed"}
    store = SqlEventStore(f"sqlite:///{tmp_path / 'state' / 'events.sqlite'}")
    assert verify_rows(store.rows()).ok
    for s in by_target.values():
        events = list(store.read_stream(s["session_id"]))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert Counter(e.type for e in events)["ToolCallCompleted"] == 2
        assert {e.idempotency_key for e in events} == {
            "session:started",
            "step:1:start",
            "step:1:end",
            "step:2:start",
        }
    for i in range(n):
        assert "old_name" not in (tmp_path / "repos" / f"r{i:02d}" / "mod.py").read_text()


def test_jobs_with_a_shell_step_or_few_targets_keep_a_chain_per_target():
    search = SearchStep(pattern="x")
    assert chunk_size(MIN_TASKS_PER_STEP, [search]) == 1
    assert chunk_size(200, [search]) > 1
    from orchestrator.run.steps import ShellStep

    assert chunk_size(200, [search, ShellStep(command=("true",))]) == 1


def test_a_search_step_is_one_append_and_a_redelivery_appends_nothing(tmp_path: Path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "a.py").write_text("needle\n")
    store = sqlite_store(tmp_path)
    t = Ticket(
        job_id="job-1",
        session_id="s-1",
        target="ws",
        path=str(tmp_path / "ws"),
        steps=("find",),
        sessions_total=1,
    )
    step = SearchStep(name="find", pattern="needle", literal=True)
    assert Runner(store, "worker:a").run_step(t, 0, step, last=True) == "completed"
    first = list(store.read_stream("s-1"))
    assert Runner(store, "worker:b").run_step(t, 0, step, last=True) == "completed"
    assert list(store.read_stream("s-1")) == first
    keys = Counter(e.idempotency_key for e in first)
    assert set(keys) == {"session:started", "step:1:start"}
    assert [e.type for e in first if e.idempotency_key == "step:1:start"] == [
        "TurnStarted",
        "ToolCallRequested",
        "PermissionDecided",
        "ToolCallStarted",
        "ToolCallCompleted",
        "TurnCompleted",
        "SessionCompleted",
    ]

"""The pure verdicts behind the fault handling: a stalled job, the step a
resumed session starts from, a dead worker's stale in-flight record, and
the cause a store error names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from events import payloads as p
from events.errors import StoreUnavailable, filesystem_problem, named_cause
from events.projections import JobState
from events.projections.session import Confirmation, SessionState, ToolCall
from orchestrator.ops.heartbeat import Beat, stale
from orchestrator.service.resume import next_step, stalled

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
REFS = (p.SessionRef(session_id="s1", target="a"), p.SessionRef(session_id="s2", target="b"))
JOB = JobState(job_id="j", name="n", sessions=REFS, status="running")


def session(sid: str, **kw: object) -> SessionState:
    fields: dict[str, object] = {"session_id": sid, "job_id": "j", "status": "running", **kw}
    return SessionState(**fields)  # type: ignore[arg-type]


def test_a_running_job_idle_past_the_limit_is_stalled() -> None:
    found = stalled(JOB, [session("s1")], NOW - timedelta(seconds=100), NOW, 60)
    assert found is not None and found.unfinished == 2 and found.idle_s == 100


def test_recent_progress_a_waiting_answer_or_the_end_is_not_a_stall() -> None:
    assert stalled(JOB, [session("s1")], NOW - timedelta(seconds=10), NOW, 60) is None
    asked = Confirmation(call_id="c", turn=1, tool="shell", rule_id="r", reason="why")
    waiting = session("s1", confirmations=(asked,))
    assert stalled(JOB, [waiting], NOW - timedelta(hours=2), NOW, 60) is None
    done = JOB.model_copy(update={"status": "completed"})
    assert stalled(done, [], NOW - timedelta(hours=2), NOW, 60) is None


def test_a_resumed_session_starts_at_its_first_unended_step() -> None:
    assert next_step(session("s", status="new"), 3) == 0
    one = ToolCall(call_id="c1", turn=1, tool="shell", status="completed")
    two = ToolCall(call_id="c2", turn=2, tool="shell", status="started")
    assert next_step(session("s", calls=(one,)), 3) == 1
    assert next_step(session("s", calls=(one, two)), 3) == 1  # the interrupted one again
    assert next_step(session("s", status="completed", calls=(one,)), 3) == 2  # reports


def test_only_other_workers_records_gone_stale_with_work_are_taken() -> None:
    beat = Beat(hostname="a", pid=1, at=100.0, store_ok=True, active=("j/s1",))
    assert stale([beat], 131.0, 30, me="b") == [beat]
    assert stale([beat], 129.0, 30, me="b") == []
    assert stale([beat], 131.0, 30, me="a") == []
    idle = Beat(hostname="c", pid=1, at=0.0, store_ok=True)
    assert stale([idle], 131.0, 30, me="b") == []


def test_a_store_error_names_a_full_or_read_only_disk() -> None:
    url = "sqlite:////data/events.sqlite"
    assert named_cause(url, Exception("database or disk is full")) == (
        "disk full at /data/events.sqlite"
    )
    assert named_cause(url, Exception("attempt to write a readonly database")) == (
        "read-only store at /data/events.sqlite"
    )
    assert named_cause("postgresql://h/db", Exception("connection refused")) is None
    message = str(StoreUnavailable(url, Exception("database or disk is full")))
    assert "disk full at /data/events.sqlite" in message and "Free space" in message


def test_the_file_system_check_sees_free_space(tmp_path: Path) -> None:
    assert filesystem_problem(tmp_path / "events.sqlite", min_free=1) is None
    assert "disk full at" in (filesystem_problem(tmp_path / "x", min_free=1 << 62) or "")

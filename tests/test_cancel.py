"""Cancelling a job: the runner and the agent loop end its sessions before
their next step; sessions waiting for a confirmation end at once. A real
SQLite store and the real runner, no worker (test_api runs them on one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from events import payloads as p
from events.envelope import NewEvent
from events.projections import JobState, apply_job
from events.replay import replay
from events.store import SqlEventStore, open_store
from orchestrator.agent.loop import AgentLoop
from orchestrator.agent.providers.scripted import ScriptedProvider
from orchestrator.errors import Conflict, NotFound
from orchestrator.run import jobs
from orchestrator.run.confirmations import pending
from orchestrator.run.jobspec import parse_spec
from orchestrator.run.runner import Runner, job_state
from tests.factories import place

TWO_STEPS = """
name: two
targets: [repo]
steps:
  - {kind: search, name: first, pattern: x}
  - {kind: search, name: second, pattern: x}
"""


@pytest.fixture
def store(tmp_path: Path) -> SqlEventStore:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "a.py").write_text("x = 1\n")
    s = open_store(f"sqlite:///{tmp_path / 'events.sqlite'}", upgrade=True)
    yield s
    s.close()


def submitted(store: SqlEventStore, base: Path, text: str = TWO_STEPS):
    spec = parse_spec(text)
    job_id, tickets = jobs.prepare(spec, base)
    jobs.record(store, spec, job_id, tickets, "user:sub")
    return spec, job_id, tickets


def test_the_first_cancel_request_is_the_one_the_job_keeps() -> None:
    events = place(
        "job",
        [
            p.JobSubmitted(name="j", spec={}, sessions=()),
            p.JobCancelRequested(by="api:ops", reason="wrong targets"),
            p.JobCancelRequested(by="api:root", reason="again"),
        ],
    )
    state = JobState()
    for e in events:
        state = apply_job(state, e)
    assert (state.cancelled_by, state.cancel_reason) == ("api:ops", "wrong targets")


def test_a_cancelled_job_stops_before_the_next_step(store, tmp_path) -> None:
    spec, job_id, [t] = submitted(store, tmp_path)
    runner = Runner(store, "worker:a")
    assert runner.run_step(t, 0, spec.steps[0], last=False) == "running"
    done = jobs.cancel(store, job_id, by="api:ops", reason="enough")
    assert (done.ours, done.stopped, done.running) == (True, (), (t.session_id,))
    assert runner.run_step(t, 1, spec.steps[1], last=True) == "failed"
    s = replay(store, t.session_id).session
    assert s.error == "JobCancelled: cancelled by api:ops: enough"
    assert [turn.turn for turn in s.turns] == [1]
    job = job_state(store, job_id)
    assert job.status == "cancelled" and job.cancelled_by == "api:ops"
    with pytest.raises(Conflict, match="already cancelled"):
        jobs.cancel(store, job_id, by="api:ops", reason="twice")


def test_a_step_reads_its_session_and_its_jobs_cancel_in_one_query(store, tmp_path) -> None:
    spec, job_id, [t] = submitted(store, tmp_path)
    runner = Runner(store, "worker:a")
    assert runner.run_step(t, 0, spec.steps[0], last=False) == "running"
    jobs.cancel(store, job_id, by="api:ops", reason="enough")
    statements: list[str] = []
    store._writers.get().set_trace_callback(statements.append)
    state = runner.load(t.session_id, job_id)  # the step task's read (tasks.outcome)
    assert len(statements) == 1 and " UNION ALL " in statements[0]
    assert runner.run_step(t, 1, spec.steps[1], last=True, state=state) == "failed"
    assert statements[1].startswith("INSERT"), statements  # SessionFailed, nothing read first
    assert replay(store, t.session_id).session.error == "JobCancelled: cancelled by api:ops: enough"


def test_a_step_from_a_state_loaded_without_its_job_reads_the_job(store, tmp_path) -> None:
    spec, job_id, [t] = submitted(store, tmp_path)
    runner = Runner(store, "worker:a")
    assert runner.run_step(t, 0, spec.steps[0], last=False) == "running"
    runner.load(t.session_id, job_id)  # read with the job: no cancel yet
    jobs.cancel(store, job_id, by="api:ops", reason="later")
    state = runner.load(t.session_id)  # a later read, the job's not in it
    assert runner.run_step(t, 1, spec.steps[1], last=True, state=state) == "failed"
    assert replay(store, t.session_id).session.error == "JobCancelled: cancelled by api:ops: later"


def test_a_second_request_returns_the_first(store, tmp_path) -> None:
    _, job_id, _ = submitted(store, tmp_path)
    jobs.cancel(store, job_id, by="api:ops", reason="first")
    again = jobs.cancel(store, job_id, by="api:root", reason="second")
    assert (again.ours, again.by, again.reason) == (False, "api:ops", "first")
    assert [e.type for e in store.read_stream(job_id)].count("JobCancelRequested") == 1


def test_an_unknown_job_cannot_be_cancelled(store) -> None:
    with pytest.raises(NotFound):
        jobs.cancel(store, "no-such-job", by="api:ops", reason="")


def test_a_session_waiting_for_a_confirmation_ends_at_once(store, tmp_path) -> None:
    spec, job_id, [t] = submitted(
        store,
        tmp_path,
        """
name: tidy
targets: [repo]
steps: [{kind: delete, path: a.py}]
""",
    )
    assert Runner(store, "worker:a").run_step(t, 0, spec.steps[0], last=True) == "waiting"
    assert [w.call_id for w in pending(store)] == [f"{t.session_id}/1"]
    done = jobs.cancel(store, job_id, by="api:ops", reason="keep the file")
    assert done.stopped == (t.session_id,)
    assert pending(store) == []
    last = list(store.read_stream(t.session_id))[-1]
    assert last.type == "SessionFailed" and last.actor == "api:ops"
    assert job_state(store, job_id).status == "cancelled"
    assert (tmp_path / "repo" / "a.py").exists()


def test_an_agent_session_of_a_cancelled_job_asks_the_model_nothing(store, tmp_path) -> None:
    provider = ScriptedProvider([{"content": "done"}])
    loop = AgentLoop(Runner(store, "worker:a"), lambda _: provider)
    _, job_id, [t] = submitted(
        store,
        tmp_path,
        """
name: agent
targets: [repo]
steps: []
agent: {instruction: look around, turns: [{content: done}]}
""",
    )
    assert t.agent is not None
    jobs.cancel(store, job_id, by="api:ops", reason="not today")
    assert loop.advance(t) == "failed"
    types = [e.type for e in store.read_stream(t.session_id)]
    assert "ModelRequested" not in types and types[-1] == "SessionFailed"
    assert (
        replay(store, t.session_id).session.error == "JobCancelled: cancelled by api:ops: not today"
    )
    assert job_state(store, job_id).status == "cancelled"


def test_a_runner_reads_only_the_job_streams_new_events(store, tmp_path) -> None:
    _, job_id, [t] = submitted(store, tmp_path)
    runner = Runner(store, "worker:a")
    assert runner.cancellation(job_id) is None
    assert runner._jobs[job_id] == (1, None)  # JobSubmitted read once
    jobs.cancel(store, job_id, by="api:ops", reason="")
    assert runner.cancellation(job_id) == ("api:ops", "")
    assert isinstance(list(store.read_stream(job_id))[-1].payload, p.JobCancelRequested)


def test_a_cancel_between_the_last_session_and_the_jobs_end_ends_it_cancelled(
    store, tmp_path
) -> None:
    """The cancel lands after the last SessionFinished and before JobCompleted:
    the job ends cancelled with the reason, not "completed" beside a cancel."""
    _, job_id, [t] = submitted(store, tmp_path)
    store.append(
        job_id,
        [
            NewEvent.create(
                p.SessionFinished(session_id=t.session_id, status="completed"),
                actor="worker:a",
                correlation_id=job_id,
                idempotency_key=f"finished:{t.session_id}",
            )
        ],
        None,
    )
    jobs.cancel(store, job_id, by="api:ops", reason="stop it")
    Runner(store, "worker:a").report(job_id, t.session_id, "completed", None, 1)
    job = job_state(store, job_id)
    assert (job.status, job.cancelled_by, job.cancel_reason) == ("cancelled", "api:ops", "stop it")
    ended = list(store.read_stream(job_id))[-1].payload
    assert isinstance(ended, p.JobCompleted) and ended.status == "cancelled"


def test_a_job_that_completed_cannot_be_cancelled_after_the_fact(store, tmp_path) -> None:
    spec, job_id, [t] = submitted(store, tmp_path)
    runner = Runner(store, "worker:a")
    runner.run_step(t, 0, spec.steps[0], last=False)
    runner.run_step(t, 1, spec.steps[1], last=True)
    job = job_state(store, job_id)
    assert job.status == "completed"
    with pytest.raises(Conflict, match="already completed"):
        jobs.cancel(store, job_id, by="api:ops", reason="too late")
    assert not any(e.type == "JobCancelRequested" for e in store.read_stream(job_id))


def test_a_job_whose_sessions_all_ended_reads_as_ended_before_its_completion() -> None:
    events = place(
        "job",
        [
            p.JobSubmitted(
                name="j", spec={}, sessions=(p.SessionRef(session_id="s1", target="a"),)
            ),
            p.SessionFinished(session_id="s1", status="completed"),
        ],
    )
    state = JobState()
    for e in events:
        state = apply_job(state, e)
    assert (state.status, state.outcome) == ("running", "completed")
    cancelled = state.model_copy(update={"cancelled_by": "api:ops"})
    assert cancelled.outcome == "cancelled"

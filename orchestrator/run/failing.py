"""Recording that a session cannot go on: an unexpected error in its task
(tasks.steps, tasks.agent) or a failure spooled through a store outage
(tasks.recording). The session ends `failed` and its job hears of it."""

from __future__ import annotations

from events import payloads as p
from events.replay import load
from orchestrator.run.runner import Runner
from orchestrator.run.ticket import Ticket

__all__ = ["fail_session"]


def fail_session(
    runner: Runner, ticket: Ticket, error: str, message: str, task_id: str | None = None
) -> None:
    """Record that a session cannot go on (an unexpected error in its task)."""

    def _fail() -> None:
        state = load(runner.store, ticket.session_id)
        if state.session.status == "new":
            runner._start(ticket, state, None)
            state = load(runner.store, ticket.session_id)
        if not state.session.finished:
            runner._append(
                ticket.session_id,
                [p.SessionFailed(error=error, message=message)],
                state.last_seq,
                "session:failed",
                ticket.job_id,
                f"task:{task_id}" if task_id else None,
            )
        runner.report(ticket.job_id, ticket.session_id, "failed", None, ticket.sessions_total)

    runner._retrying(_fail)

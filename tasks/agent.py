"""The agent task: one unit of an agent session's work per task.

`agent_advance` runs `AgentLoop.advance` and, while there is more to do,
enqueues itself again: each model call and each tool call is then one task a
worker can pick up, watched in Flower like any other. Transient failures (a
model endpoint that rate-limits or is down, a database that went away) are
retried with the delay they ask for; anything else, or retries running out,
fails that session only, with the reason recorded.
"""

from __future__ import annotations

from typing import Any

from celery.utils.log import get_task_logger

from orchestrator.agent.loop import AgentLoop
from orchestrator.agent.providers.base import ModelError
from orchestrator.ops import logs
from orchestrator.run.failing import fail_session
from orchestrator.run.runner import Ticket
from tasks.app import app, settings
from tasks.deps import deps
from tasks.dispatch import AGENT_ADVANCE, sign_link
from tasks.outcome import StepFailed, finished_before, settle

# A unit is one model call (its retries included) or one tool call.
SOFT_LIMIT_S, HARD_LIMIT_S = 900, 960
log = get_task_logger(__name__)
_loop: tuple[int, AgentLoop] | None = None


@app.task(
    bind=True,
    name=AGENT_ADVANCE,
    acks_late=True,
    soft_time_limit=SOFT_LIMIT_S,
    time_limit=HARD_LIMIT_S,
    max_retries=settings.task_max_retries,
    throws=(StepFailed,),  # the session ended failed, recorded (tasks.outcome)
)
def agent_advance(self: Any, ticket: dict[str, Any]) -> str:
    t = Ticket.model_validate(ticket)
    logs.bind(job_id=t.job_id, session_id=t.session_id)
    before = finished_before(deps().runner, [t])
    try:
        outcome = deps().loop.advance(t, task_id=self.request.id)
    except Exception as exc:
        if getattr(exc, "transient", False) and self.request.retries < self.max_retries:
            delay = getattr(exc, "retry_after_s", None) or min(2**self.request.retries, 60)
            raise self.retry(exc=exc, countdown=delay) from exc
        log.exception("agent session %s stopped: %s", t.session_id, exc)
        if isinstance(exc, ModelError):
            state = deps().loop.runner.load(t.session_id)
            a = state.session.agent
            deps().loop.fail_model(t, a.requested if a else 0, exc, f"task:{self.request.id}")
        else:
            fail_session(
                deps().runner,
                t,
                type(exc).__name__,
                f"the agent could not go on: {exc}",
                self.request.id,
            )
        outcome = "failed"
    if outcome == "continue":
        agent_advance.apply_async((ticket,))
    elif outcome in ("completed", "failed") and deps().signing:
        sign_link(app, [t]).apply_async()
    settle(self, deps().runner, [t], [outcome], before, "the agent's turn")
    return outcome

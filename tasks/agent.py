"""The agent task: one unit of an agent session's work per task.

`agent_advance` runs `AgentLoop.advance` and, while there is more to do,
enqueues itself again: each model call and each tool call is then one task a
worker can pick up, watched in Flower like any other. Transient failures (a
model endpoint that rate-limits or is down, a database that went away) are
retried with the delay they ask for; anything else, or retries running out,
fails that session only, with the reason recorded.
"""

from __future__ import annotations

import os
from typing import Any

from celery.utils.log import get_task_logger

from orchestrator.agent.loop import AgentLoop
from orchestrator.agent.providers.base import ModelError
from orchestrator.agent.providers.factory import api_key, providers_for
from orchestrator.config.settings import get_settings
from orchestrator.ops import logs
from orchestrator.run.runner import Ticket, fail_session
from tasks.app import app
from tasks.dispatch import AGENT_ADVANCE, sign_link, signing
from tasks.steps import runner

# A unit is one model call (its retries included) or one tool call.
SOFT_LIMIT_S, HARD_LIMIT_S = 900, 960
log = get_task_logger(__name__)
_loop: tuple[int, AgentLoop] | None = None


def loop() -> AgentLoop:
    """One loop per worker process, on the process's runner."""
    global _loop
    if _loop is None or _loop[0] != os.getpid():
        s = get_settings()
        key = api_key(s)
        _loop = (
            os.getpid(),
            AgentLoop(
                runner(),
                providers_for(s),
                default_provider=s.model_provider,
                default_model=s.model_name,
                secrets=(key,) if key else (),
                store_content=s.prompt_storage == "masked",
            ),
        )
    return _loop[1]


@app.task(
    bind=True,
    name=AGENT_ADVANCE,
    acks_late=True,
    soft_time_limit=SOFT_LIMIT_S,
    time_limit=HARD_LIMIT_S,
    max_retries=get_settings().task_max_retries,
)
def agent_advance(self: Any, ticket: dict[str, Any]) -> str:
    t = Ticket.model_validate(ticket)
    logs.bind(job_id=t.job_id, session_id=t.session_id)
    try:
        outcome = loop().advance(t, task_id=self.request.id)
    except Exception as exc:
        if getattr(exc, "transient", False) and self.request.retries < self.max_retries:
            delay = getattr(exc, "retry_after_s", None) or min(2**self.request.retries, 60)
            raise self.retry(exc=exc, countdown=delay) from exc
        log.exception("agent session %s stopped: %s", t.session_id, exc)
        if isinstance(exc, ModelError):
            state = loop().runner.load(t.session_id)
            a = state.session.agent
            loop().fail_model(t, a.requested if a else 0, exc, f"task:{self.request.id}")
        else:
            fail_session(
                runner(),
                t,
                type(exc).__name__,
                f"the agent could not go on: {exc}",
                self.request.id,
            )
        outcome = "failed"
    if outcome == "continue":
        agent_advance.apply_async((ticket,))
    elif outcome in ("completed", "failed") and signing():
        sign_link(app, [t]).apply_async()
    return outcome

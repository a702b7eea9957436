"""Step tasks: thin shells around `orchestrator.runner`.

A job is a Celery group of one chain per target; each link is `run_step`.
Retries happen only for errors that say they are transient (a database or
broker that went away, a lost race); anything else fails the session with the
error recorded, so the chain, the job and the operator never hang.
"""

from __future__ import annotations

import os
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import TypeAdapter

from events.store import SqlEventStore
from orchestrator.config import get_settings
from orchestrator.runner import Runner, Ticket, fail_session
from orchestrator.steps import Step
from tasks.app import app

STEP = TypeAdapter(Step)
_runner: tuple[int, Runner] | None = None


def runner() -> Runner:
    """One store per worker process, opened after the fork."""
    global _runner
    if _runner is None or _runner[0] != os.getpid():
        settings = get_settings()
        _runner = (os.getpid(), Runner(SqlEventStore(settings.effective_store_url),
                                       settings.worker_actor))
    return _runner[1]


@app.task(bind=True, name="orchestrator.run_step", acks_late=True,
          max_retries=get_settings().task_max_retries)
def run_step(self: Any, ticket: dict[str, Any], index: int, step: dict[str, Any],
             last: bool) -> str:
    t = Ticket.model_validate(ticket)
    try:
        return runner().run_step(t, index, STEP.validate_python(step), last=last,
                                 task_id=self.request.id)
    except SoftTimeLimitExceeded:
        fail_session(runner(), t, "TaskTimeLimit",
                     f"step {index + 1} ran past the task time limit; raise the step's "
                     "timeout_s", self.request.id)
        return "failed"
    except Exception as exc:
        if getattr(exc, "transient", False) and self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 30)) from exc
        fail_session(runner(), t, type(exc).__name__,
                     f"step {index + 1} could not run: {exc}", self.request.id)
        return "failed"

"""Enqueueing a job: a Celery group of one chain per target, a task per step."""

from __future__ import annotations

from collections.abc import Sequence

from celery import chain, group

from orchestrator.runner import Ticket
from orchestrator.steps import Step
from tasks.steps import run_step

# Headroom on top of a step's own timeout for loading state and appending events.
TASK_LIMIT_MARGIN_S = 60


def enqueue(tickets: Sequence[Ticket], steps: Sequence[Step]) -> None:
    last = len(steps) - 1
    chains = [
        chain(*(
            run_step.si(t.model_dump(mode="json"), i, step.model_dump(mode="json"), i == last)
            .set(soft_time_limit=step.timeout_s + TASK_LIMIT_MARGIN_S,
                 time_limit=step.timeout_s + 2 * TASK_LIMIT_MARGIN_S)
            for i, step in enumerate(steps)))
        for t in tickets
    ]
    group(chains).apply_async()

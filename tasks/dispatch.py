"""Enqueueing a job: a Celery group of chains, one link per step.

A chain runs one target's steps in order. With many targets and only fast
file steps (search, replace, write, patch: milliseconds each), a task per
target and step costs more than the step (a broker round trip, a result, a
worker-side setup): targets are then cut into chunks, and each link of a
chunk's chain is one `run_steps` task running that step for the chunk's
sessions one after another. A job with a shell step keeps a chain per target
(`run_step`): commands take seconds to minutes, and every worker should get
its share of them.

With an audit signing key configured, each chain ends with
`orchestrator.audit.sign_heads` for its sessions and their job (tasks.audit):
a digest signed when the sessions end, in a task of its own, so signing
never fails a step.

`CeleryDispatcher` is orchestrator's `Dispatcher` (orchestrator.service.dispatch)
around one Celery app: the CLI and the API get it from `tasks.app.dispatcher`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from celery import Celery, chain, group
from celery.canvas import Signature

from orchestrator.run.runner import Ticket
from orchestrator.run.steps import ShellStep, Step
from tasks.summary import summarized

# Headroom on top of a step's own timeout for loading state and appending events.
TASK_LIMIT_MARGIN_S = 60
# Chunks: at least this many tasks per step (spread over the workers), at most
# this many sessions per task.
MIN_TASKS_PER_STEP = 16
MAX_CHUNK = 32
RUN_STEP = "orchestrator.run_step"
RUN_STEPS = "orchestrator.run_steps"
SIGN_HEADS = "orchestrator.audit.sign_heads"
AGENT_ADVANCE = "orchestrator.agent_advance"


def chunk_size(targets: int, steps: Sequence[Step]) -> int:
    """Sessions per task: 1 (a chain per target) unless every step is fast."""
    if targets <= MIN_TASKS_PER_STEP or any(isinstance(s, ShellStep) for s in steps):
        return 1
    return min(MAX_CHUNK, math.ceil(targets / MIN_TASKS_PER_STEP))


def sign_link(app: Celery, tickets: Sequence[Ticket]) -> Signature:
    """The last link of a chain: sign the heads of its sessions and their job."""
    streams = [*(t.session_id for t in tickets), *dict.fromkeys(t.job_id for t in tickets)]
    return summarized(app.signature(SIGN_HEADS, args=(streams,), immutable=True))


def enqueue(
    tickets: Sequence[Ticket],
    steps: Sequence[Step],
    app: Celery,
    *,
    sign: bool,
) -> None:
    """Send the job's canvas on `app`; `sign` ends each chain with a digest
    (the caller's settings have an audit key: `CeleryDispatcher.sign`)."""
    agent = any(t.agent for t in tickets)
    # With an agent after the steps, the agent ends the session, not the last step.
    last = -1 if agent else len(steps) - 1
    size = 1 if agent else chunk_size(len(tickets), steps)
    chunks = [tickets[i : i + size] for i in range(0, len(tickets), size)]

    def link(chunk: Sequence[Ticket], i: int, step: Step) -> object:
        dumped = [t.model_dump(mode="json") for t in chunk]
        name, first = (RUN_STEP, dumped[0]) if size == 1 else (RUN_STEPS, dumped)
        # A chunk's backstop allows every session its full step timeout.
        budget = step.timeout_s * len(chunk)
        return summarized(
            app.signature(
                name, args=(first, i, step.model_dump(mode="json"), i == last), immutable=True
            )
        ).set(
            soft_time_limit=budget + TASK_LIMIT_MARGIN_S,
            time_limit=budget + 2 * TASK_LIMIT_MARGIN_S,
        )

    def tail(chunk: Sequence[Ticket]) -> list[Signature]:
        # The agent task enqueues itself until it is done, and signs then.
        if agent:
            return [agent_link(app, chunk[0])]
        return [sign_link(app, chunk)] if sign else []

    chains = [chain(*(link(c, i, step) for i, step in enumerate(steps)), *tail(c)) for c in chunks]
    group(chains, app=app).apply_async()


def agent_link(app: Celery, ticket: Ticket) -> Signature:
    """The agent's first unit of work (`tasks.agent`)."""
    return summarized(
        app.signature(AGENT_ADVANCE, args=(ticket.model_dump(mode="json"),), immutable=True)
    )


def continue_session(
    ticket: Ticket, start: int, steps: Sequence[Step], app: Celery, *, sign: bool
) -> None:
    """Enqueue one session's steps from `start` on (after a confirmation was
    answered): the same tasks, keys and limits as the job's own chain."""
    last = -1 if ticket.agent else len(steps) - 1
    links = [
        summarized(
            app.signature(
                RUN_STEP,
                args=(
                    ticket.model_dump(mode="json"),
                    i,
                    steps[i].model_dump(mode="json"),
                    i == last,
                ),
                immutable=True,
            )
        ).set(
            soft_time_limit=steps[i].timeout_s + TASK_LIMIT_MARGIN_S,
            time_limit=steps[i].timeout_s + 2 * TASK_LIMIT_MARGIN_S,
        )
        for i in range(start, len(steps))
    ]
    if ticket.agent:
        links.append(agent_link(app, ticket))
    elif sign:
        links.append(sign_link(app, [ticket]))
    chain(*links).apply_async()


class CeleryDispatcher:
    """The `Dispatcher` on one Celery app. `sign`: chains end with a digest
    (an audit key is configured); `broadcast`: the broker carries remote
    control (a server broker; the embedded one has none)."""

    def __init__(self, app: Celery, *, sign: bool, broadcast: bool) -> None:
        self.app = app
        self.sign = sign
        self.broadcast = broadcast

    def enqueue(self, tickets: Sequence[Ticket], steps: Sequence[Step]) -> None:
        enqueue(tickets, steps, self.app, sign=self.sign)

    def continue_session(self, ticket: Ticket, start: int, steps: Sequence[Step]) -> None:
        continue_session(ticket, start, steps, self.app, sign=self.sign)

    def start_agent(self, ticket: Ticket) -> None:
        agent_link(self.app, ticket).apply_async()

    def seal(self, tickets: Sequence[Ticket]) -> None:
        if self.sign:
            sign_link(self.app, tickets).apply_async()

    def revoke(self, task_id: str) -> None:
        if self.broadcast:
            self.app.control.revoke(task_id, terminate=True, signal="SIGKILL")

    def ping(self) -> list[Any]:
        return list(self.app.control.ping(timeout=1.0) or [])

"""The use cases the CLI, the API and chat share, each written once.

Every function receives what it works on (the store, a dispatcher, plain
values such as who acts): none reads the settings or knows Celery, so a test
or a second deployment in one process passes its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from events.store import EventStore
from orchestrator.guard.policy import PolicyDoc, Tier
from orchestrator.run import confirmations, jobs
from orchestrator.run.jobs import Cancellation
from orchestrator.run.jobspec import JobSpec
from orchestrator.run.runner import Ticket
from orchestrator.run.steps import Step
from orchestrator.service.dispatch import Dispatcher


def submit(
    store: EventStore,
    dispatcher: Dispatcher,
    spec: JobSpec,
    base_dir: Path,
    *,
    actor: str,
    policy_files: Sequence[PolicyDoc] = (),
    tier: Tier | None = None,
    elevated_by: str | None = None,
    vet: Callable[[list[Ticket]], None] | None = None,
    scope: Callable[[str], AbstractContextManager[object]] = lambda job_id: nullcontext(),
) -> tuple[str, list[Ticket]]:
    """Prepare a job (one ticket per target), record JobSubmitted and enqueue
    it. `vet` sees the tickets before anything is recorded and may raise
    (the API refuses targets outside its workspace root); recording and
    enqueueing run inside `scope(job_id)` (the CLI's trace span and log ids)."""
    job_id, tickets = jobs.prepare(
        spec, base_dir, policy_files=policy_files, tier=tier, elevated_by=elevated_by
    )
    if vet is not None:
        vet(tickets)
    with scope(job_id):
        jobs.record(store, spec, job_id, tickets, actor)
        dispatcher.enqueue(tickets, spec.steps)
    return job_id, tickets


@dataclass(frozen=True)
class Answered:
    """What `answer` did: `ours` is False when someone answered first (then
    nothing was enqueued); the session continues from step index `start`."""

    waiting: confirmations.Waiting
    ours: bool
    ticket: Ticket
    start: int
    steps: tuple[Step, ...]

    @property
    def continues_from(self) -> str:
        return f"step {self.start + 1}" if self.start < len(self.steps) else "its agent"


def answer(
    store: EventStore,
    dispatcher: Dispatcher,
    waiting: confirmations.Waiting,
    *,
    grant: bool,
    by: str,
    reason: str,
) -> Answered:
    """Record the answer to a waiting confirmation, then continue the session
    on the workers, unless another answer was recorded first."""
    ours, ticket, start, steps = confirmations.answer(
        store, waiting, grant=grant, by=by, reason=reason
    )
    if ours:
        dispatcher.continue_session(ticket, start, steps)
    return Answered(waiting, ours, ticket, start, steps)


def cancel(store: EventStore, job_id: str, *, by: str, reason: str) -> Cancellation:
    """Request a job's end; sessions waiting for an answer end now, running
    ones before their next step, and a running shell step is killed: the
    call polls its job stream every second (`Runner.stop_reason`), so this
    reaches a worker on any host with no broker broadcast."""
    return jobs.cancel(store, job_id, by=by, reason=reason)


def continue_session(
    dispatcher: Dispatcher, ticket: Ticket, start: int, steps: Sequence[Step]
) -> None:
    """Enqueue a session's remaining steps from index `start` (a chat turn
    that answered its own confirmation)."""
    dispatcher.continue_session(ticket, start, steps)

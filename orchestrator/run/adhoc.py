"""One tool call as an ad-hoc session: `orchestrator sandbox run` and
`orchestrator fs ...`. The same policy, runner, sandbox and event store as a
job step (a one-step job is recorded, and the runner a worker uses runs it),
in this process instead of through the queue, so a user can test a policy or
a sandbox the way `codex sandbox` lets them, and an operator can reproduce a
report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events.projections import Projections
from events.replay import replay
from events.store import EventStore
from orchestrator.guard.policy import PolicyDoc, Tier
from orchestrator.run import jobs
from orchestrator.run.jobspec import JobSpec
from orchestrator.run.runner import Runner
from orchestrator.run.steps import Step


@dataclass(frozen=True)
class Outcome:
    session_id: str
    status: str  # completed | failed | waiting
    state: Projections

    @property
    def exit_code(self) -> int:
        """As for jobs: 0 ok, 1 the call failed, 3 refused or waiting for confirmation."""
        if self.status == "completed":
            return 0
        if self.status == "waiting" or (self.state.session.error or "").startswith("PolicyRefused"):
            return 3
        return 1

    @property
    def output(self) -> str:
        calls = self.state.session.calls
        return calls[-1].output if calls else ""


def run_one(
    store: EventStore,
    workspace: Path,
    step: Step,
    *,
    actor: str,
    policy_files: list[PolicyDoc],
    tier: Tier | None,
    elevated_by: str | None,
    settings: Any = None,
) -> Outcome:
    """`settings`: what the network tools read (the CLI's root passes its own)."""
    spec = JobSpec(name=f"adhoc {step.kind}", targets=(str(workspace.resolve()),), steps=(step,))
    job_id, tickets = jobs.prepare(
        spec, Path.cwd(), policy_files=policy_files, tier=tier, elevated_by=elevated_by
    )
    jobs.record(store, spec, job_id, tickets, actor)
    [ticket] = tickets
    status = Runner(store, actor, settings=settings).run_step(ticket, 0, step, last=True)
    return Outcome(ticket.session_id, status, replay(store, ticket.session_id))

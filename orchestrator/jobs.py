"""Submitting a job: validate, resolve targets, record JobSubmitted.

Enqueueing the canvas is `tasks.dispatch` (tasks depend on orchestrator, never
the reverse); the CLI composes the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from events import payloads as p
from events.envelope import NewEvent, new_id
from events.store import SqlEventStore
from orchestrator.jobspec import JobSpec, resolve_targets
from orchestrator.policy import PolicyDoc, Tier, combine, strictest_tier
from orchestrator.runner import Ticket


def prepare(spec: JobSpec, base_dir: Path, *, policy_files: Sequence[PolicyDoc] = (),
            tier: Tier | None = None, elevated_by: str | None = None,
            ) -> tuple[str, list[Ticket]]:
    """A new job id and one ticket (a future session) per resolved target.

    Each session runs under one policy: the job spec's combined with
    `policy_files` (a `--policy` file, the configured one), the strictest
    setting of each winning; `tier` is the caller's (`--tier`, config), and
    `elevated_by` names who passed `--allow-destructive`."""
    job_id = new_id()
    labels = tuple(s.label for s in spec.steps)
    targets = resolve_targets(spec, base_dir)
    doc = combine(spec.policy, *policy_files)
    chosen = strictest_tier(spec.tier, tier) if (spec.tier or tier) else None
    tickets = [Ticket(job_id=job_id, session_id=new_id(), target=name,
                      path=str(path) if path is not None else None, error=error, steps=labels,
                      sessions_total=len(targets), policy=doc.model_dump(mode="json"),
                      tier=chosen, elevated_by=elevated_by,
                      agent=spec.agent.model_dump(mode="json") if spec.agent else None)
               for name, path, error in targets]
    return job_id, tickets


def record(store: SqlEventStore, spec: JobSpec, job_id: str, tickets: list[Ticket],
           actor: str) -> None:
    """Append JobSubmitted: the job's stream starts with the full spec and its sessions."""
    event = NewEvent.create(
        p.JobSubmitted(name=spec.name, spec=spec.model_dump(mode="json"),
                       sessions=tuple(p.SessionRef(session_id=t.session_id, target=t.target)
                                      for t in tickets)),
        actor=actor, correlation_id=job_id, idempotency_key="job:submitted")
    store.append(job_id, [event], 0)

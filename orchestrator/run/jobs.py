"""Submitting a job: validate, resolve targets, record JobSubmitted.

Enqueueing is the dispatcher's (`orchestrator.service.dispatch`, implemented
in `tasks/`); `orchestrator.service.workflows.submit` composes the two for the
CLI, the API and `diagnose`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from events import payloads as p
from events.envelope import NewEvent, new_id
from events.errors import SequenceConflict
from events.store import EventStore
from orchestrator.errors import Conflict, NotFound, PolicyDenied
from orchestrator.guard.policy import (
    TOOLCHAIN_RULE,
    PolicyDoc,
    Tier,
    combine,
    strictest_tier,
    toolchain_refusal,
)
from orchestrator.run.jobspec import JobSpec, resolve
from orchestrator.run.runner import Ticket


def prepare(
    spec: JobSpec,
    base_dir: Path,
    *,
    policy_files: Sequence[PolicyDoc] = (),
    tier: Tier | None = None,
    elevated_by: str | None = None,
) -> tuple[str, list[Ticket]]:
    """A new job id and one ticket (a future session) per resolved target.

    Each session runs under one policy: the job spec's combined with
    `policy_files` (a `--policy` file, the configured one), the strictest
    setting of each winning; `tier` is the caller's (`--tier`, config), and
    `elevated_by` names who passed `--allow-destructive`. A target whose
    toolchains the policy's `toolchains:` list does not allow is refused
    (PolicyDenied, rule `toolchains-allowed`): nothing is recorded."""
    job_id = new_id()
    labels = tuple(s.label for s in spec.steps)
    targets = resolve(spec, base_dir)
    doc = combine(spec.policy, *policy_files)
    allowed = doc.toolchains and tuple(
        os.path.realpath(a) if os.path.isabs(a) else a for a in doc.toolchains
    )
    for t in targets:
        why = toolchain_refusal(allowed, t.toolchains, os.path.realpath(t.path or "."))
        if why is not None:
            raise PolicyDenied(
                f"submitting job {spec.name!r} (target {t.name})", TOOLCHAIN_RULE, why
            )
    chosen = strictest_tier(spec.tier, tier) if (spec.tier or tier) else None
    tickets = [
        Ticket(
            job_id=job_id,
            session_id=new_id(),
            target=t.name,
            path=str(t.path) if t.path is not None else None,
            error=t.error,
            steps=labels,
            sessions_total=len(targets),
            policy=doc.model_dump(mode="json"),
            tier=chosen,
            elevated_by=elevated_by,
            agent=spec.agent.model_dump(mode="json") if spec.agent else None,
            vars=dict(t.vars),
            toolchains=t.toolchains,
        )
        for t in targets
    ]
    return job_id, tickets


def record(
    store: EventStore, spec: JobSpec, job_id: str, tickets: list[Ticket], actor: str
) -> None:
    """Append JobSubmitted: the job's stream starts with the full spec and its sessions."""
    event = NewEvent.create(
        p.JobSubmitted(
            name=spec.name,
            spec=spec.model_dump(mode="json"),
            sessions=tuple(
                p.SessionRef(
                    session_id=t.session_id,
                    target=t.target,
                    vars=t.vars,
                    toolchains=t.toolchains,
                    workspace=t.path,
                )
                for t in tickets
            ),
            policy=tickets[0].policy if tickets else None,
            tier=tickets[0].tier if tickets else None,
            elevated_by=tickets[0].elevated_by if tickets else None,
        ),
        actor=actor,
        correlation_id=job_id,
        idempotency_key="job:submitted",
    )
    store.append(job_id, [event], 0)


@dataclass(frozen=True)
class Cancellation:
    """What `cancel` did. `by` and `reason` are the request that counts (the
    first, when two people cancel at once); `stopped` are the sessions ended
    here (they waited for a confirmation, so no task would have come);
    `running` the ones workers end before their next step."""

    job_id: str
    by: str
    reason: str
    ours: bool
    stopped: tuple[str, ...]
    running: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "cancelled_by": self.by,
            "reason": self.reason,
            "first_request": self.ours,
            "stopped": list(self.stopped),
            "running": list(self.running),
        }


CANCEL_ATTEMPTS = 20  # reads and appends racing the job's own events


def cancel(store: EventStore, job_id: str, *, by: str, reason: str) -> Cancellation:
    """Record JobCancelRequested on the job's stream (once: a second request
    returns the first), and end the sessions that wait for a confirmation.
    The CLI's `cancel` and the API's `POST /jobs/{id}/cancel` both come here."""
    from events.replay import replay
    from orchestrator.run.runner import Runner, job_state_at

    event = NewEvent.create(
        p.JobCancelRequested(by=by, reason=reason),
        actor=by,
        correlation_id=job_id,
        idempotency_key="job:cancel",
    )
    for _ in range(CANCEL_ATTEMPTS):
        job, seq = job_state_at(store, job_id)
        if not job.sessions:
            raise NotFound(f"no job {job_id} in the event store; check the id (from `submit`)")
        if job.status in ("completed", "failed", "cancelled"):
            raise Conflict(f"job {job_id} already {job.status}; there is nothing left to cancel")
        try:
            # After what was read: a job that completed in between is not
            # cancelled after the fact (it would read "completed, cancel: X").
            stored = store.append(job_id, [event], seq)
            break
        except SequenceConflict:
            continue
    else:
        raise Conflict(f"job {job_id} kept changing while cancelling it; try again")
    first = stored[0].payload
    assert isinstance(first, p.JobCancelRequested)
    runner = Runner(store, by)
    finished = {sid for sid, _ in job.finished}
    stopped, running = [], []
    for ref in job.sessions:
        if ref.session_id in finished:
            continue
        state = replay(store, ref.session_id)
        s = state.session
        if s.finished:
            continue
        if s.waiting and not any(c.status == "started" for c in s.calls):
            ticket = Ticket(
                job_id=job_id,
                session_id=ref.session_id,
                target=ref.target,
                path=None,
                # as `prepare` gave them: a live state keeps no step names
                steps=tuple(st.label for st in JobSpec.model_validate(job.spec).steps),
                sessions_total=len(job.sessions),
            )
            ended = runner._retrying(
                lambda t=ticket: runner.stop_if_cancelled(
                    t, replay(store, t.session_id), f"cancel:{job_id}"
                )
            )
            runner.report(
                job_id, ref.session_id, ended.session.status, f"cancel:{job_id}", len(job.sessions)
            )
            stopped.append(ref.session_id)
        else:
            running.append(ref.session_id)
    return Cancellation(
        job_id,
        first.by,
        first.reason,
        stored[0].event_id == event.event_id,
        tuple(stopped),
        tuple(running),
    )

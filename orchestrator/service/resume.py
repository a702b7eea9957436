"""Stalled jobs, and resuming them from the store's own record.

A broker that loses messages (Redis restarted without persistence, a queue
purged) leaves sessions that no task will ever run: the job says `running`
forever. The store knows what is unfinished, so:

- `stalled` (`orchestrator.service.stalls`) is the pure verdict;
- `running_jobs` / `find_stalled` read it from the store (`health`, the
  `orch_jobs_stalled` metric; `status` reads it from its own read of the job);
- `resume` re-enqueues each unfinished session from its next step, rebuilt
  from the job's and the session's events (as a confirmation's answer
  does). Idempotent: a step already recorded is found by its idempotency
  keys and not appended twice, so resuming a job that was not lost only
  costs duplicate deliveries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from events.envelope import Event
from events.projections import JobState, SessionState, apply_job
from events.replay import replay
from events.store import EventStore
from orchestrator.errors import Conflict, NotFound
from orchestrator.guard.policy import PolicyDoc, combine
from orchestrator.run.jobspec import JobSpec, resolve
from orchestrator.run.steps import Step
from orchestrator.run.ticket import Ticket
from orchestrator.service.dispatch import Dispatcher
from orchestrator.service.stalls import Stall, stalled

__all__ = ["Resumed", "Stall", "find_stalled", "plan", "resume", "running_jobs", "stalled"]


def job_record(store: EventStore, job_id: str) -> tuple[JobState, list[SessionState], datetime]:
    """The job, its sessions that started, and its newest event's time."""
    job = JobState()
    newest: Event | None = None
    for e in store.read_stream(job_id):
        job = apply_job(job, e)
        newest = e
    if not job.sessions or newest is None:
        raise NotFound(f"no job {job_id} in the event store; check the id (from `submit`)")
    sessions = []
    last = newest.occurred_at
    for ref in job.sessions:
        state = replay(store, ref.session_id)
        if state.session.status != "new":
            sessions.append(state.session)
        tail = list(store.read_stream(ref.session_id, max(state.last_seq - 1, 0)))
        if tail and tail[-1].occurred_at > last:
            last = tail[-1].occurred_at
    return job, sessions, last


def running_jobs(store: EventStore) -> list[str]:
    """Ids of jobs submitted and not completed (the job-type index)."""
    open_: dict[str, None] = {}
    for e in store.read_types(["JobSubmitted", "JobCompleted"]):
        if e.type == "JobSubmitted":
            open_[e.stream_id] = None
        else:
            open_.pop(e.stream_id, None)
    return list(open_)


def find_stalled(store: EventStore, now: datetime, after_s: float) -> list[Stall]:
    found = []
    for job_id in running_jobs(store):
        job, sessions, last = job_record(store, job_id)
        stall = stalled(job, sessions, last, now, after_s)
        if stall is not None:
            found.append(stall)
    return found


@dataclass(frozen=True)
class Resumed:
    """One session sent to the workers again, from step `start` (0-based)."""

    ticket: Ticket
    start: int
    steps: tuple[Step, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "session_id": self.ticket.session_id,
            "target": self.ticket.target,
            "from_step": self.start + 1,
        }


def next_step(s: SessionState, steps: int) -> int:
    """The index of the first step the session has not ended (a finished
    session that was never reported to its job: its last, which reports)."""
    if s.finished or s.status == "new":
        return steps - 1 if s.finished else 0
    ended = [c.turn for c in s.calls if c.status in ("completed", "failed", "denied")]
    return min(max(ended, default=0), steps - 1)


def plan(
    store: EventStore,
    job_id: str,
    *,
    base_dir: Path,
    policy_files: Sequence[PolicyDoc] = (),
    tier: str | None = None,
) -> list[Resumed]:
    """What `resume` would enqueue: every session its job has no end for.

    A session that started is rebuilt from its own events (workspace,
    policy, tier). One that never started (its worker may have died between
    receiving the step and starting it) is rebuilt from the job's stream: its
    workspace is the folder `submit` recorded for it (for jobs recorded
    before that field: the target resolved against the folder a started
    sibling ran in, else `base_dir`) and its policy the siblings' (else the
    spec's combined with `policy_files`)."""
    job, sessions, _ = job_record(store, job_id)
    if job.status != "running":
        raise Conflict(f"job {job_id} already {job.status}; there is nothing to resume")
    spec = JobSpec.model_validate(job.spec)
    started = {s.session_id: s for s in sessions}
    reported = {sid for sid, _ in job.finished}
    sibling = next(iter(started.values()), None)
    base = _base_dir(job, sibling) or base_dir
    paths = {t.name: t for t in resolve(spec, base)}
    doc = job.policy or (
        sibling.policy if sibling else combine(spec.policy, *policy_files).model_dump(mode="json")
    )
    agent = spec.agent.model_dump(mode="json") if spec.agent else None
    out = []
    for ref in job.sessions:
        if ref.session_id in reported:
            continue
        s = started.get(ref.session_id)
        if s is not None and s.waiting:
            continue  # it waits for an answer: `approve`/`deny` continues it
        target = paths.get(ref.target)
        path = (
            s.target
            if s
            else ref.workspace or (str(target.path) if target and target.path else None)
        )
        ticket = Ticket(
            job_id=job_id,
            session_id=ref.session_id,
            target=ref.target,
            path=path,
            error=None
            if s or ref.workspace or (target and target.error is None)
            else _lost(ref.target, target),
            steps=tuple(st.label for st in spec.steps),
            sessions_total=len(job.sessions),
            policy=s.policy if s else doc,
            tier=(s.tier if s else sibling.tier if sibling else job.tier or tier),
            elevated_by=(
                s.elevated_by if s else sibling.elevated_by if sibling else job.elevated_by
            ),
            agent=agent,
            vars=ref.vars,
            toolchains=ref.toolchains,
        )
        start = next_step(s, len(spec.steps)) if s else 0
        out.append(Resumed(ticket, start, tuple(spec.steps)))
    return out


def _lost(name: str, target: object) -> str:
    error = getattr(target, "error", None)
    return error or f"target {name} no longer resolves from the job's folder"


def _base_dir(job: JobState, sibling: SessionState | None) -> Path | None:
    """The folder `submit` resolved targets against, from a started session:
    its absolute workspace minus its display name."""
    if sibling is None:
        return None
    ref = next((r for r in job.sessions if r.session_id == sibling.session_id), None)
    if ref is None or Path(ref.target).is_absolute():
        return None
    workspace = Path(sibling.target)
    parts = Path(ref.target).parts
    if workspace.parts[-len(parts) :] != parts:
        return None
    return Path(*workspace.parts[: -len(parts)])


def resume(
    store: EventStore,
    dispatcher: Dispatcher,
    job_id: str,
    *,
    base_dir: Path,
    policy_files: Sequence[PolicyDoc] = (),
    tier: str | None = None,
) -> list[Resumed]:
    """Enqueue every unfinished session of the job again (module doc)."""
    found = plan(store, job_id, base_dir=base_dir, policy_files=policy_files, tier=tier)
    for r in found:
        dispatcher.continue_session(r.ticket, r.start, r.steps)
    return found

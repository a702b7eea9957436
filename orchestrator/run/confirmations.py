"""Answering `ask`: listing what waits, and recording an operator's answer.

An answer is an event on the session's stream (ConfirmationGranted or
ConfirmationDenied) under one idempotency key per call, so two operators
answering at once record one answer, and the first wins. The session's
steps from the asked one on are then enqueued again: a grant runs exactly
that call, a denial fails its step. Everything needed to continue (the
target, the steps, the policy) is rebuilt from the events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from events import payloads as p
from events.envelope import Event, NewEvent
from events.projections import JobState, Projections, SessionState, apply_job
from events.replay import replay
from events.store import EventStore
from orchestrator.errors import NotFound, UserError
from orchestrator.run.jobspec import JobSpec
from orchestrator.run.runner import Ticket
from orchestrator.run.steps import Step


@dataclass(frozen=True)
class Waiting:
    call_id: str
    session_id: str
    job_id: str
    target: str
    turn: int
    step: str
    tool: str
    rule_id: str
    reason: str
    asked_at: datetime
    args: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "asked_at": self.asked_at.isoformat()}


CONFIRMATION_TYPES = ("ConfirmationRequested", "ConfirmationGranted", "ConfirmationDenied")


def unanswered(events: Iterable[Event]) -> dict[str, Event]:
    """The ConfirmationRequested events no Granted/Denied answers, by call id."""
    asked: dict[str, Event] = {}
    answered: set[str] = set()
    for e in events:
        if isinstance(e.payload, p.ConfirmationRequested):
            asked[e.payload.call_id] = e
        elif isinstance(e.payload, (p.ConfirmationGranted, p.ConfirmationDenied)):
            answered.add(e.payload.call_id)
    return {c: e for c, e in asked.items() if c not in answered}


def pending(store: EventStore) -> list[Waiting]:
    """Every unanswered confirmation, oldest first. Reads only the three
    confirmation types (an index, not the whole log) and replays only the
    sessions that still wait."""
    out = []
    states: dict[str, Projections] = {}
    for call_id, e in unanswered(store.read_types(CONFIRMATION_TYPES)).items():
        pl = e.payload
        state = states.get(e.stream_id)
        if state is None:
            state = states[e.stream_id] = replay(store, e.stream_id)
        s = state.session
        if s.finished:  # e.g. its job was cancelled: nothing waits any more
            continue
        call = s.call(call_id)
        args = next((x.args for x in state.ledger.entries if x.call_id == call_id), {})
        turn = s.turn(pl.turn)
        out.append(
            Waiting(
                call_id,
                e.stream_id,
                s.job_id,
                s.target,
                pl.turn,
                turn.name if turn else "",
                call.tool if call else pl.tool,
                pl.rule_id,
                pl.reason,
                e.occurred_at,
                dict(args),
            )
        )
    return sorted(out, key=lambda w: w.asked_at)


def find(store: EventStore, ident: str) -> Waiting:
    """The waiting confirmation `ident` names (its call id, or a unique prefix)."""
    waiting = pending(store)
    exact = [w for w in waiting if w.call_id == ident]
    found = exact or [w for w in waiting if w.call_id.startswith(ident)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFound(
            f"no confirmation {ident!r} is waiting; list them with "
            "`orchestrator pending` (it may have been answered already)"
        )
    raise UserError(
        f"{ident!r} matches {len(found)} waiting confirmations; give more of the "
        "id: " + ", ".join(w.call_id for w in found)
    )


def answer(
    store: EventStore, w: Waiting, *, grant: bool, by: str, reason: str
) -> tuple[bool, Ticket, int, tuple[Step, ...]]:
    """Record the answer. Returns (whether ours is the answer that counts,
    the session's ticket, the step index to continue from, the job's steps)."""
    payload = (p.ConfirmationGranted if grant else p.ConfirmationDenied)(
        call_id=w.call_id, by=by, reason=reason
    )
    event = NewEvent.create(
        payload, actor=by, correlation_id=w.job_id, idempotency_key=f"confirm:{w.call_id}"
    )
    stored = store.append(w.session_id, [event], None)
    ours = stored[0].event_id == event.event_id
    ticket, steps = continuation(store, w.session_id)
    return ours, ticket, w.turn - 1, steps


def continuation(store: EventStore, session_id: str) -> tuple[Ticket, tuple[Step, ...]]:
    """The ticket and steps that continue a session, from its events alone."""
    s: SessionState = replay(store, session_id).session
    job = JobState()
    for e in store.read_stream(s.job_id):
        job = apply_job(job, e)
    spec = JobSpec.model_validate(job.spec)
    ref = next((r for r in job.sessions if r.session_id == session_id), None)
    ticket = Ticket(
        job_id=s.job_id,
        session_id=session_id,
        target=ref.target if ref else s.target,
        path=s.target,
        steps=s.steps,
        sessions_total=len(job.sessions),
        policy=s.policy,
        tier=s.tier,
        elevated_by=s.elevated_by,
        agent=spec.agent.model_dump(mode="json") if spec.agent else None,
        vars=ref.vars if ref else {},
        toolchains=ref.toolchains if ref else (),
    )
    return ticket, spec.steps

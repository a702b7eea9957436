"""Pure projections: `state = apply(state, event)` folds over frozen models.

No clock, no I/O: everything a projection knows comes from the events. One
handler per payload type per projection; unknown-to-this-projection payloads
leave the state untouched (the same object, so folding is cheap).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from functools import singledispatch
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from events import payloads as p
from events.envelope import Event


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


# -- SessionState ------------------------------------------------------------

class Turn(_Frozen):
    turn: int
    name: str
    kind: str
    status: Literal["running", "ok", "failed", "skipped"] = "running"


class ToolCall(_Frozen):
    call_id: str
    turn: int
    tool: str
    status: Literal["requested", "allowed", "denied", "asked", "started",
                    "completed", "failed"] = "requested"
    exit_code: int | None = None
    error: str | None = None
    output: str = ""
    planned_count: int = 0


class FileChange(_Frozen):
    path: str
    before_hash: str | None
    after_hash: str | None


class PendingChange(FileChange):
    call_id: str
    diff: str


class SessionState(_Frozen):
    session_id: str = ""
    job_id: str = ""
    target: str = ""
    steps: tuple[str, ...] = ()
    status: Literal["new", "running", "completed", "failed"] = "new"
    error: str | None = None
    turns: tuple[Turn, ...] = ()
    calls: tuple[ToolCall, ...] = ()
    files_changed: tuple[FileChange, ...] = ()
    changed_paths: frozenset[str] = frozenset()
    pending: tuple[PendingChange, ...] = ()   # of calls started but not yet completed
    patch: str = ""
    last_seq: int = 0

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed")

    def call(self, call_id: str) -> ToolCall | None:
        for c in reversed(self.calls):
            if c.call_id == call_id:
                return c
        return None

    def turn(self, number: int) -> Turn | None:
        for t in reversed(self.turns):
            if t.turn == number:
                return t
        return None


def _update_last(items: tuple[Any, ...], match: Callable[[Any], bool],
                 update: dict[str, object]) -> tuple[Any, ...] | None:
    """`items` with the last match updated, or None. The item an event updates is
    nearly always the newest, so searching from the end keeps folds linear."""
    for i in range(len(items) - 1, -1, -1):
        if match(items[i]):
            return (*items[:i], items[i].model_copy(update=update), *items[i + 1:])
    return None


def _replace_call(s: SessionState, call_id: str, **update: object) -> SessionState:
    calls = _update_last(s.calls, lambda c: c.call_id == call_id, update)
    return s if calls is None else s.model_copy(update={"calls": calls})


@singledispatch
def _session(payload: object, s: SessionState, e: Event) -> SessionState:
    return s


@_session.register
def _(pl: p.SessionStarted, s: SessionState, e: Event) -> SessionState:
    return s.model_copy(update={"session_id": e.stream_id, "job_id": pl.job_id,
                                "target": pl.target, "steps": pl.steps, "status": "running"})


@_session.register
def _(pl: p.TurnStarted, s: SessionState, e: Event) -> SessionState:
    return s.model_copy(update={"turns": (*s.turns, Turn(turn=pl.turn, name=pl.name,
                                                         kind=pl.kind))})


@_session.register
def _(pl: p.TurnCompleted, s: SessionState, e: Event) -> SessionState:
    turns = _update_last(s.turns, lambda t: t.turn == pl.turn, {"status": pl.status})
    return s if turns is None else s.model_copy(update={"turns": turns})


@_session.register
def _(pl: p.ToolCallRequested, s: SessionState, e: Event) -> SessionState:
    return s.model_copy(update={"calls": (*s.calls, ToolCall(call_id=pl.call_id, turn=pl.turn,
                                                             tool=pl.tool))})


_DECIDED = {"allow": "allowed", "deny": "denied", "ask": "asked"}


@_session.register
def _(pl: p.PermissionDecided, s: SessionState, e: Event) -> SessionState:
    return _replace_call(s, pl.call_id, status=_DECIDED[pl.decision])


@_session.register
def _(pl: p.ToolCallStarted, s: SessionState, e: Event) -> SessionState:
    return _replace_call(s, pl.call_id, status="started", planned_count=pl.planned_count)


@_session.register
def _(pl: p.FileChanged, s: SessionState, e: Event) -> SessionState:
    change = PendingChange(call_id=pl.call_id, path=pl.path, before_hash=pl.before_hash,
                           after_hash=pl.after_hash, diff=pl.diff)
    return s.model_copy(update={"pending": (*s.pending, change)})


def _confirm(s: SessionState, call_id: str) -> dict[str, object]:
    """Move a completed call's pending changes into the session's changes and patch.
    A path changed twice keeps its first `before` and its last `after`."""
    mine = [c for c in s.pending if c.call_id == call_id]
    if not mine:
        return {}
    files = s.files_changed
    for c in mine:
        change = FileChange(path=c.path, before_hash=c.before_hash, after_hash=c.after_hash)
        if c.path in s.changed_paths:
            files = tuple(change.model_copy(update={"before_hash": f.before_hash})
                          if f.path == c.path else f for f in files)
        else:
            files = (*files, change)
    return {"files_changed": files,
            "changed_paths": s.changed_paths | {c.path for c in mine},
            "pending": tuple(c for c in s.pending if c.call_id != call_id),
            "patch": s.patch + "".join(c.diff for c in mine)}


@_session.register
def _(pl: p.ToolCallCompleted, s: SessionState, e: Event) -> SessionState:
    s = _replace_call(s, pl.call_id, status="completed", exit_code=pl.exit_code,
                      output=pl.output)
    return s.model_copy(update=_confirm(s, pl.call_id))


@_session.register
def _(pl: p.ToolCallFailed, s: SessionState, e: Event) -> SessionState:
    s = _replace_call(s, pl.call_id, status="failed", error=pl.error, output=pl.output)
    return s.model_copy(update={"pending": tuple(c for c in s.pending if c.call_id != pl.call_id)})


@_session.register
def _(pl: p.SessionCompleted, s: SessionState, e: Event) -> SessionState:
    return s.model_copy(update={"status": "completed"})


@_session.register
def _(pl: p.SessionFailed, s: SessionState, e: Event) -> SessionState:
    return s.model_copy(update={"status": "failed", "error": f"{pl.error}: {pl.message}"})


def apply_session(s: SessionState, e: Event) -> SessionState:
    return _session(e.payload, s, e).model_copy(update={"last_seq": e.seq})


# -- JobState (the job's own stream) ----------------------------------------

class JobState(_Frozen):
    job_id: str = ""
    name: str = ""
    sessions: tuple[p.SessionRef, ...] = ()
    finished: tuple[tuple[str, str], ...] = ()     # (session_id, status) in finishing order
    status: Literal["new", "running", "completed", "failed"] = "new"
    spec: dict[str, object] = {}

    @property
    def all_finished(self) -> bool:
        return bool(self.sessions) and len(self.finished) >= len(self.sessions)

    @property
    def failed(self) -> int:
        return sum(1 for _, st in self.finished if st == "failed")


def apply_job(s: JobState, e: Event) -> JobState:
    pl = e.payload
    if isinstance(pl, p.JobSubmitted):
        return s.model_copy(update={"job_id": e.stream_id, "name": pl.name, "spec": pl.spec,
                                    "sessions": pl.sessions, "status": "running"})
    if isinstance(pl, p.SessionFinished):
        if any(sid == pl.session_id for sid, _ in s.finished):
            return s
        return s.model_copy(update={"finished": (*s.finished, (pl.session_id, pl.status))})
    if isinstance(pl, p.JobCompleted):
        return s.model_copy(update={"status": pl.status})
    return s


# -- QuotaUsage --------------------------------------------------------------

RATE_WINDOW = 256  # most recent tool-call times kept for sliding-window rate limits


class QuotaUsage(_Frozen):
    tool_calls: tuple[tuple[str, int], ...] = ()   # (tool, count), sorted by tool
    tool_failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    shell_cpu_s: float = 0.0
    shell_wall_s: float = 0.0
    bytes_written: int = 0
    output_bytes: int = 0
    recent_calls: tuple[datetime, ...] = ()

    def calls_of(self, tool: str) -> int:
        return dict(self.tool_calls).get(tool, 0)

    def calls_since(self, since: datetime) -> int:
        return sum(1 for t in self.recent_calls if t >= since)


def _count_call(s: QuotaUsage, tool: str, at: datetime) -> dict[str, object]:
    counts = dict(s.tool_calls)
    counts[tool] = counts.get(tool, 0) + 1
    return {"tool_calls": tuple(sorted(counts.items())),
            "recent_calls": (*s.recent_calls, at)[-RATE_WINDOW:]}


@singledispatch
def _quota(payload: object, s: QuotaUsage, e: Event) -> QuotaUsage:
    return s


@_quota.register
def _(pl: p.ToolCallCompleted, s: QuotaUsage, e: Event) -> QuotaUsage:
    update = _count_call(s, pl.tool, e.occurred_at)
    update["output_bytes"] = s.output_bytes + pl.output_bytes
    update["bytes_written"] = s.bytes_written + pl.bytes_written
    if pl.tool == "shell":
        update["shell_cpu_s"] = s.shell_cpu_s + pl.cpu_s
        update["shell_wall_s"] = s.shell_wall_s + pl.duration_s
    return s.model_copy(update=update)


@_quota.register
def _(pl: p.ToolCallFailed, s: QuotaUsage, e: Event) -> QuotaUsage:
    # A failed call that ran still cost its resources; a call that never
    # started (denied) produces no ToolCallFailed and costs nothing.
    update = _count_call(s, pl.tool, e.occurred_at)
    update["tool_failures"] = s.tool_failures + 1
    update["output_bytes"] = s.output_bytes + pl.output_bytes
    if pl.tool == "shell":
        update["shell_cpu_s"] = s.shell_cpu_s + pl.cpu_s
        update["shell_wall_s"] = s.shell_wall_s + pl.duration_s
    return s.model_copy(update=update)


def apply_quota(s: QuotaUsage, e: Event) -> QuotaUsage:
    return _quota(e.payload, s, e)


# -- PermissionLedger --------------------------------------------------------

class LedgerEntry(_Frozen):
    call_id: str
    seq: int                      # of the PermissionDecided event
    tool: str
    args: dict[str, object]
    decision: p.Decision | None = None
    rule_id: str | None = None
    policy_hash: str | None = None
    reason: str = ""
    decided_by: str | None = None
    confirmed_by: str | None = None


class PermissionLedger(_Frozen):
    entries: tuple[LedgerEntry, ...] = ()


@singledispatch
def _ledger(payload: object, s: PermissionLedger, e: Event) -> PermissionLedger:
    return s


@_ledger.register
def _(pl: p.ToolCallRequested, s: PermissionLedger, e: Event) -> PermissionLedger:
    entry = LedgerEntry(call_id=pl.call_id, seq=e.seq, tool=pl.tool, args=pl.args)
    return s.model_copy(update={"entries": (*s.entries, entry)})


@_ledger.register
def _(pl: p.PermissionDecided, s: PermissionLedger, e: Event) -> PermissionLedger:
    entries = _update_last(s.entries, lambda x: x.call_id == pl.call_id, {
        "decision": pl.decision, "rule_id": pl.rule_id, "seq": e.seq,
        "policy_hash": pl.policy_hash, "reason": pl.reason, "decided_by": e.actor})
    return s if entries is None else s.model_copy(update={"entries": entries})


def apply_ledger(s: PermissionLedger, e: Event) -> PermissionLedger:
    return _ledger(e.payload, s, e)


# -- all three ---------------------------------------------------------------

class Projections(_Frozen):
    session: SessionState = SessionState()
    quota: QuotaUsage = QuotaUsage()
    ledger: PermissionLedger = PermissionLedger()

    @property
    def last_seq(self) -> int:
        return self.session.last_seq


def apply(state: Projections, e: Event) -> Projections:
    return Projections(session=apply_session(state.session, e),
                       quota=apply_quota(state.quota, e),
                       ledger=apply_ledger(state.ledger, e))


def fold(events: Iterable[Event], state: Projections | None = None) -> Projections:
    """Fold events into all three projections: equal to `apply` event by event,
    but builds the combined value once (replay speed is a product feature)."""
    start = state if state is not None else Projections()
    session, quota, ledger = start.session, start.quota, start.ledger
    last_seq = session.last_seq
    for e in events:
        pl = e.payload
        session = _session(pl, session, e)
        quota = _quota(pl, quota, e)
        ledger = _ledger(pl, ledger, e)
        last_seq = e.seq
    if last_seq != session.last_seq:
        session = session.model_copy(update={"last_seq": last_seq})
    return Projections.model_construct(session=session, quota=quota, ledger=ledger)

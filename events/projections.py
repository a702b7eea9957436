"""Pure projections: `state = apply(state, event)` folds over frozen models.

No clock, no I/O: everything a projection knows comes from the events. One
handler per payload type per projection; unknown-to-this-projection payloads
leave the state untouched (the same object, so folding is cheap).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from functools import singledispatch
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from events import payloads as p
from events.envelope import Event, construct_trusted


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
    status: Literal["requested", "allowed", "denied", "asked", "started", "completed", "failed"] = (
        "requested"
    )
    exit_code: int | None = None
    error: str | None = None
    message: str = ""  # a failure's message (what an agent is told)
    output: str = ""
    planned_count: int = 0


class FileChange(_Frozen):
    path: str
    before_hash: str | None
    after_hash: str | None


class PendingChange(FileChange):
    call_id: str
    diff: str


class Confirmation(_Frozen):
    call_id: str
    turn: int
    tool: str
    rule_id: str
    reason: str
    status: Literal["pending", "granted", "denied"] = "pending"
    by: str | None = None
    answer: str = ""  # the approver's reason


class AgentCall(_Frozen):
    """A tool call the model asked for; it runs as session turn `turn` (0:
    it could not run, and `error` is what the model is told)."""

    id: str
    name: str
    arguments: str
    turn: int = 0
    error: str | None = None


class AgentEntry(_Frozen):
    """One message of the conversation, as the events hold it."""

    role: Literal["user", "assistant", "cancelled"]
    text: str | None = None
    calls: tuple[AgentCall, ...] = ()
    model_turn: int = 0


class AgentState(_Frozen):
    mode: Literal["job", "chat"] = "job"
    instruction: str = ""
    provider: str = ""
    model: str = ""
    max_turns: int = 0
    max_invalid_calls: int = 0
    token_budget: int | None = None
    prompt_version: str = ""
    tools: tuple[str, ...] = ()
    entries: tuple[AgentEntry, ...] = ()
    model_turns: int = 0  # model calls answered
    requested: int = 0  # the model turn asked for last (> model_turns: in flight)
    invalid_calls: int = 0
    failure: str | None = None  # the last ModelFailed, "error: message"
    cancelled_turn: int = 0  # model turns up to this one were cancelled (chat Ctrl-C)

    @property
    def last_reply(self) -> AgentEntry | None:
        for entry in reversed(self.entries):
            if entry.role == "assistant":
                return entry
        return None


def fold_agent(a: AgentState | None, pl: object) -> AgentState | None:
    """The agent part of a session, one agent event at a time (pure)."""
    if isinstance(pl, p.AgentStarted):
        return AgentState(
            mode=pl.mode,
            instruction=pl.instruction,
            provider=pl.provider,
            model=pl.model,
            max_turns=pl.max_turns,
            max_invalid_calls=pl.max_invalid_calls,
            token_budget=pl.token_budget,
            prompt_version=pl.prompt_version,
            tools=pl.tools,
            entries=(AgentEntry(role="user", text=pl.instruction),) if pl.instruction else (),
        )
    if a is None:
        return None
    if isinstance(pl, p.UserMessage):
        return a.model_copy(update={"entries": (*a.entries, AgentEntry(role="user", text=pl.text))})
    if isinstance(pl, p.ModelRequested):
        return a.model_copy(update={"requested": pl.model_turn, "failure": None})
    if isinstance(pl, p.ModelResponded):
        if pl.model_turn <= a.cancelled_turn:
            return a  # the answer to a cancelled turn arrived late: recorded, not acted on
        calls = tuple(
            AgentCall(id=c.id, name=c.name, arguments=c.arguments, turn=c.turn, error=c.error)
            for c in pl.tool_calls
        )
        entry = AgentEntry(role="assistant", text=pl.content, calls=calls, model_turn=pl.model_turn)
        return a.model_copy(
            update={
                "entries": (*a.entries, entry),
                "model_turns": max(a.model_turns, pl.model_turn),
                "invalid_calls": a.invalid_calls + sum(1 for c in calls if c.error),
            }
        )
    if isinstance(pl, p.ModelFailed):
        return a.model_copy(update={"failure": f"{pl.error}: {pl.message}"})
    if isinstance(pl, p.AgentTurnCancelled):
        # The cancelled turn's number is used up: the next model turn gets a
        # new one (and new idempotency keys).
        done = max(a.model_turns, pl.model_turn)
        return a.model_copy(
            update={
                "entries": (*a.entries, AgentEntry(role="cancelled", model_turn=pl.model_turn)),
                "requested": done,
                "model_turns": done,
                "cancelled_turn": max(a.cancelled_turn, pl.model_turn),
            }
        )
    return a


_AGENT_EVENTS = (
    "AgentStarted",
    "UserMessage",
    "ModelRequested",
    "ModelResponded",
    "ModelFailed",
    "AgentTurnCancelled",
)


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
    pending: tuple[PendingChange, ...] = ()  # of calls started but not yet completed
    patch: str = ""
    last_seq: int = 0
    # The policy the session runs under (PolicyAttached): the whole document,
    # so a worker decides from the log, not from what a message carried.
    policy: dict[str, Any] | None = None
    policy_hash: str = ""
    tier: str | None = None
    elevated_by: str | None = None
    confirmations: tuple[Confirmation, ...] = ()
    agent: AgentState | None = None

    @property
    def waiting(self) -> tuple[Confirmation, ...]:
        """Confirmations nobody has answered yet: the session waits for them."""
        return tuple(c for c in self.confirmations if c.status == "pending")

    def confirmation(self, call_id: str) -> Confirmation | None:
        for c in reversed(self.confirmations):
            if c.call_id == call_id:
                return c
        return None

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


def _update_last(
    items: tuple[Any, ...], match: Callable[[Any], bool], update: dict[str, object]
) -> tuple[Any, ...] | None:
    """`items` with the last match updated, or None. The item an event updates is
    nearly always the newest, so searching from the end keeps folds linear."""
    for i in range(len(items) - 1, -1, -1):
        if match(items[i]):
            return (*items[:i], items[i].model_copy(update=update), *items[i + 1 :])
    return None


def _replace_call(s: SessionState, call_id: str, **update: object) -> SessionState:
    calls = _update_last(s.calls, lambda c: c.call_id == call_id, update)
    return s if calls is None else s.model_copy(update={"calls": calls})


@singledispatch
def _session(payload: object, s: SessionState, e: Event) -> SessionState:
    return s


@_session.register
def _(pl: p.SessionStarted, s: SessionState, e: Event) -> SessionState:
    return s.model_copy(
        update={
            "session_id": e.stream_id,
            "job_id": pl.job_id,
            "target": pl.target,
            "steps": pl.steps,
            "status": "running",
        }
    )


@_session.register
def _(pl: p.PolicyAttached, s: SessionState, e: Event) -> SessionState:
    return s.model_copy(
        update={
            "policy": pl.document,
            "policy_hash": pl.hash,
            "tier": pl.tier,
            "elevated_by": pl.elevated_by,
        }
    )


@_session.register
def _(pl: p.ConfirmationRequested, s: SessionState, e: Event) -> SessionState:
    c = Confirmation(
        call_id=pl.call_id, turn=pl.turn, tool=pl.tool, rule_id=pl.rule_id, reason=pl.reason
    )
    return s.model_copy(update={"confirmations": (*s.confirmations, c)})


def _answer(s: SessionState, call_id: str, status: str, by: str, answer: str) -> SessionState:
    found = _update_last(
        s.confirmations,
        lambda c: c.call_id == call_id and c.status == "pending",
        {"status": status, "by": by, "answer": answer},
    )
    return s if found is None else s.model_copy(update={"confirmations": found})


@_session.register
def _(pl: p.ConfirmationGranted, s: SessionState, e: Event) -> SessionState:
    return _answer(s, pl.call_id, "granted", pl.by, pl.reason)


@_session.register
def _(pl: p.ConfirmationDenied, s: SessionState, e: Event) -> SessionState:
    return _answer(s, pl.call_id, "denied", pl.by, pl.reason)


@_session.register
def _(pl: p.TurnStarted, s: SessionState, e: Event) -> SessionState:
    return s.model_copy(
        update={"turns": (*s.turns, Turn(turn=pl.turn, name=pl.name, kind=pl.kind))}
    )


@_session.register
def _(pl: p.TurnCompleted, s: SessionState, e: Event) -> SessionState:
    turns = _update_last(s.turns, lambda t: t.turn == pl.turn, {"status": pl.status})
    return s if turns is None else s.model_copy(update={"turns": turns})


@_session.register
def _(pl: p.ToolCallRequested, s: SessionState, e: Event) -> SessionState:
    return s.model_copy(
        update={"calls": (*s.calls, ToolCall(call_id=pl.call_id, turn=pl.turn, tool=pl.tool))}
    )


_DECIDED = {"allow": "allowed", "deny": "denied", "ask": "asked"}


@_session.register
def _(pl: p.PermissionDecided, s: SessionState, e: Event) -> SessionState:
    return _replace_call(s, pl.call_id, status=_DECIDED[pl.decision])


@_session.register
def _(pl: p.ToolCallStarted, s: SessionState, e: Event) -> SessionState:
    return _replace_call(s, pl.call_id, status="started", planned_count=pl.planned_count)


@_session.register
def _(pl: p.FileChanged, s: SessionState, e: Event) -> SessionState:
    change = PendingChange(
        call_id=pl.call_id,
        path=pl.path,
        before_hash=pl.before_hash,
        after_hash=pl.after_hash,
        diff=pl.diff,
    )
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
            files = tuple(
                change.model_copy(update={"before_hash": f.before_hash}) if f.path == c.path else f
                for f in files
            )
        else:
            files = (*files, change)
    return {
        "files_changed": files,
        "changed_paths": s.changed_paths | {c.path for c in mine},
        "pending": tuple(c for c in s.pending if c.call_id != call_id),
        "patch": s.patch + "".join(c.diff for c in mine),
    }


@_session.register
def _(pl: p.ToolCallCompleted, s: SessionState, e: Event) -> SessionState:
    s = _replace_call(s, pl.call_id, status="completed", exit_code=pl.exit_code, output=pl.output)
    return s.model_copy(update=_confirm(s, pl.call_id))


@_session.register
def _(pl: p.ToolCallFailed, s: SessionState, e: Event) -> SessionState:
    s = _replace_call(
        s, pl.call_id, status="failed", error=pl.error, message=pl.message, output=pl.output
    )
    return s.model_copy(update={"pending": tuple(c for c in s.pending if c.call_id != pl.call_id)})


@_session.register
def _(pl: p.SessionCompleted, s: SessionState, e: Event) -> SessionState:
    return s.model_copy(update={"status": "completed"})


@_session.register
def _(pl: p.SessionFailed, s: SessionState, e: Event) -> SessionState:
    return s.model_copy(update={"status": "failed", "error": f"{pl.error}: {pl.message}"})


def _agent_event(pl: object, s: SessionState, e: Event) -> SessionState:
    return s.model_copy(update={"agent": fold_agent(s.agent, pl)})


for _t in _AGENT_EVENTS:
    _session.register(getattr(p, _t), _agent_event)


def apply_session(s: SessionState, e: Event) -> SessionState:
    return _session(e.payload, s, e).model_copy(update={"last_seq": e.seq})


# -- JobState (the job's own stream) ----------------------------------------


class JobState(_Frozen):
    job_id: str = ""
    name: str = ""
    sessions: tuple[p.SessionRef, ...] = ()
    finished: tuple[tuple[str, str], ...] = ()  # (session_id, status) in finishing order
    status: Literal["new", "running", "completed", "failed"] = "new"
    spec: dict[str, object] = {}
    cancelled_by: str | None = None  # JobCancelRequested: who, and why
    cancel_reason: str = ""

    @property
    def all_finished(self) -> bool:
        return bool(self.sessions) and len(self.finished) >= len(self.sessions)

    @property
    def failed(self) -> int:
        return sum(1 for _, st in self.finished if st == "failed")


def apply_job(s: JobState, e: Event) -> JobState:
    pl = e.payload
    if isinstance(pl, p.JobSubmitted):
        return s.model_copy(
            update={
                "job_id": e.stream_id,
                "name": pl.name,
                "spec": pl.spec,
                "sessions": pl.sessions,
                "status": "running",
            }
        )
    if isinstance(pl, p.SessionFinished):
        if any(sid == pl.session_id for sid, _ in s.finished):
            return s
        return s.model_copy(update={"finished": (*s.finished, (pl.session_id, pl.status))})
    if isinstance(pl, p.JobCompleted):
        return s.model_copy(update={"status": pl.status})
    if isinstance(pl, p.JobCancelRequested) and s.cancelled_by is None:
        return s.model_copy(update={"cancelled_by": pl.by, "cancel_reason": pl.reason})
    return s


# -- QuotaUsage --------------------------------------------------------------

RATE_WINDOW = 256  # most recent tool-call times kept for sliding-window rate limits


class QuotaUsage(_Frozen):
    tool_calls: tuple[tuple[str, int], ...] = ()  # (tool, count), sorted by tool
    tool_failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    model_calls: int = 0
    shell_cpu_s: float = 0.0
    shell_wall_s: float = 0.0
    bytes_written: int = 0
    output_bytes: int = 0
    recent_calls: tuple[datetime, ...] = ()
    recent_tools: tuple[str, ...] = ()  # the tool of each of recent_calls

    def calls_of(self, tool: str) -> int:
        return dict(self.tool_calls).get(tool, 0)

    def calls_since(self, since: datetime) -> int:
        return sum(1 for t in self.recent_calls if t >= since)

    def recent_by_tool(self) -> dict[str, tuple[datetime, ...]]:
        """The kept call times per tool (what per-tool rate limits count)."""
        out: dict[str, list[datetime]] = {}
        for tool, at in zip(self.recent_tools, self.recent_calls):
            out.setdefault(tool, []).append(at)
        return {k: tuple(v) for k, v in out.items()}


def _count_call(s: QuotaUsage, tool: str, at: datetime) -> dict[str, object]:
    counts = dict(s.tool_calls)
    counts[tool] = counts.get(tool, 0) + 1
    return {
        "tool_calls": tuple(sorted(counts.items())),
        "recent_calls": (*s.recent_calls, at)[-RATE_WINDOW:],
        "recent_tools": (*s.recent_tools, tool)[-RATE_WINDOW:],
    }


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


@_quota.register
def _(pl: p.ModelResponded, s: QuotaUsage, e: Event) -> QuotaUsage:
    return s.model_copy(
        update={
            "tokens_in": s.tokens_in + pl.input_tokens,
            "tokens_out": s.tokens_out + pl.output_tokens,
            "tokens_cached": s.tokens_cached + (pl.cached_tokens or 0),
            "model_calls": s.model_calls + 1,
        }
    )


def apply_quota(s: QuotaUsage, e: Event) -> QuotaUsage:
    return _quota(e.payload, s, e)


# -- PermissionLedger --------------------------------------------------------


class LedgerEntry(_Frozen):
    call_id: str
    seq: int  # of the PermissionDecided event
    tool: str
    args: dict[str, object]
    decision: p.Decision | None = None
    rule_id: str | None = None
    policy_hash: str | None = None
    reason: str = ""
    decided_by: str | None = None
    confirmed_by: str | None = None
    confirmation: Literal["granted", "denied"] | None = None


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
    entries = _update_last(
        s.entries,
        lambda x: x.call_id == pl.call_id,
        {
            "decision": pl.decision,
            "rule_id": pl.rule_id,
            "seq": e.seq,
            "policy_hash": pl.policy_hash,
            "reason": pl.reason,
            "decided_by": e.actor,
        },
    )
    return s if entries is None else s.model_copy(update={"entries": entries})


def _confirmed(s: PermissionLedger, call_id: str, answer: str, by: str) -> PermissionLedger:
    entries = _update_last(
        s.entries, lambda x: x.call_id == call_id, {"confirmation": answer, "confirmed_by": by}
    )
    return s if entries is None else s.model_copy(update={"entries": entries})


@_ledger.register
def _(pl: p.ConfirmationGranted, s: PermissionLedger, e: Event) -> PermissionLedger:
    return _confirmed(s, pl.call_id, "granted", pl.by)


@_ledger.register
def _(pl: p.ConfirmationDenied, s: PermissionLedger, e: Event) -> PermissionLedger:
    return _confirmed(s, pl.call_id, "denied", pl.by)


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
    return Projections(
        session=apply_session(state.session, e),
        quota=apply_quota(state.quota, e),
        ledger=apply_ledger(state.ledger, e),
    )


def fold(events: Iterable[Event], state: Projections | None = None) -> Projections:
    """Fold events into all three projections: equal to `apply` event by event
    (the property tests hold them equal), but through one `Folder`, so it
    copies no frozen model per event (replay speed is a product feature)."""
    f = Folder(state)
    add = f.add
    for e in events:
        add(e.type, e.payload.__dict__, e.__dict__)
    return f.result()


def fold_records(
    records: Iterable[dict[str, Any]], state: Projections | None = None
) -> Projections:
    """`fold` over envelopes as plain JSON data at today's schema version (what
    `events.upcast.current` returns): no `Event` is built."""
    f = Folder(state)
    get = _ON.get
    for r in records:
        handler = get(r["type"])
        if handler is not None:
            handler(f, r["payload"], r)
        f.last_seq = r["seq"]
    return f.result()


# -- the fold's working copy --------------------------------------------------
#
# `apply` and the handlers above define the projections, one frozen copy per
# event. A Folder computes the same result for a run of events with mutable
# working copies, and builds the frozen models once at the end. Items an event
# updates (turns, calls, ledger entries) become dicts until then; untouched
# items of a starting state stay the same objects. Indexes by id stand in for
# the handlers' search from the end: they map each id to its last occurrence.

_Item = BaseModel | dict[str, Any]


def _mutable(items: list[_Item], i: int) -> dict[str, Any]:
    item = items[i]
    if type(item) is not dict:
        item = items[i] = dict(item.__dict__)
    return item


def _frozen(model: type[BaseModel], items: list[_Item]) -> tuple[Any, ...]:
    return tuple(_built(model, x) if type(x) is dict else x for x in items)


_built = construct_trusted


def _ts(at: datetime | str) -> datetime:
    return at if isinstance(at, datetime) else datetime.fromisoformat(at)


class Folder:
    """A fold in progress: `add` events in order, then `result()`. Pure: no I/O,
    and the result depends on the events only. Events come as mappings, so
    both an `Event` (its and its payload's `__dict__`) and JSON data fit."""

    __slots__ = (
        "_session",
        "last_seq",
        "_scalars",
        "_turns",
        "_turn_at",
        "_calls",
        "_call_at",
        "_files",
        "_changed",
        "_pending",
        "_patch",
        "_quota",
        "_counts",
        "_recent",
        "_recent_tools",
        "_sums",
        "_quota_changed",
        "_entries",
        "_entry_at",
        "_confirmations",
    )

    def __init__(self, start: Projections | None = None) -> None:
        st = start if start is not None else Projections()
        s, q, led = st.session, st.quota, st.ledger
        self._session = s
        self.last_seq = s.last_seq
        self._scalars: dict[str, Any] = {}
        self._turns: list[_Item] = list(s.turns)
        self._turn_at = {t.turn: i for i, t in enumerate(s.turns)}
        self._calls: list[_Item] = list(s.calls)
        self._call_at = {c.call_id: i for i, c in enumerate(s.calls)}
        self._files: list[FileChange] = list(s.files_changed)
        self._changed = set(s.changed_paths)
        self._pending: list[PendingChange] = list(s.pending)
        self._patch = [s.patch]
        self._quota = q
        self._counts = dict(q.tool_calls)
        self._recent = list(q.recent_calls)
        self._recent_tools = list(q.recent_tools)
        self._sums = {
            "tool_failures": q.tool_failures,
            "shell_cpu_s": q.shell_cpu_s,
            "shell_wall_s": q.shell_wall_s,
            "bytes_written": q.bytes_written,
            "output_bytes": q.output_bytes,
            "tokens_in": q.tokens_in,
            "tokens_out": q.tokens_out,
            "tokens_cached": q.tokens_cached,
            "model_calls": q.model_calls,
        }
        self._quota_changed = False
        self._entries: list[_Item] = list(led.entries)
        self._entry_at = {x.call_id: i for i, x in enumerate(led.entries)}
        self._confirmations: list[_Item] = list(s.confirmations)

    def add(self, type_: str, pl: Mapping[str, Any], e: Mapping[str, Any]) -> None:
        """One event: its type, its payload's field values, and its envelope's
        (`stream_id`, `seq`, `actor`, `occurred_at`: a datetime or its text)."""
        on = _ON.get(type_)
        if on is not None:
            on(self, pl, e)
        self.last_seq = e["seq"]

    # -- session ----------------------------------------------------------------

    def _session_started(self, pl: Mapping[str, Any], e: Mapping[str, Any]) -> None:
        self._scalars.update(
            session_id=e["stream_id"],
            job_id=pl["job_id"],
            target=pl["target"],
            steps=tuple(pl["steps"]),
            status="running",
        )

    def _policy_attached(self, pl: Mapping[str, Any], *_: Any) -> None:
        self._scalars.update(
            policy=pl["document"],
            policy_hash=pl["hash"],
            tier=pl["tier"],
            elevated_by=pl["elevated_by"],
        )

    def _confirmation_requested(self, pl: Mapping[str, Any], *_: Any) -> None:
        self._confirmations.append(
            {
                "call_id": pl["call_id"],
                "turn": pl["turn"],
                "tool": pl["tool"],
                "rule_id": pl["rule_id"],
                "reason": pl["reason"],
                "status": "pending",
                "by": None,
                "answer": "",
            }
        )

    def _answered(self, status: str, pl: Mapping[str, Any]) -> None:
        items = self._confirmations
        for i in range(len(items) - 1, -1, -1):
            item: Any = items[i]
            pending = (item["status"] if isinstance(item, dict) else item.status) == "pending"
            call = item["call_id"] if isinstance(item, dict) else item.call_id
            if call == pl["call_id"] and pending:
                _mutable(items, i).update(status=status, by=pl["by"], answer=pl["reason"])
                break
        j = self._entry_at.get(pl["call_id"])
        if j is not None:
            _mutable(self._entries, j).update(confirmation=status, confirmed_by=pl["by"])

    def _granted(self, pl: Mapping[str, Any], *_: Any) -> None:
        self._answered("granted", pl)

    def _denied(self, pl: Mapping[str, Any], *_: Any) -> None:
        self._answered("denied", pl)

    def _turn_started(self, pl: Mapping[str, Any], *_: Any) -> None:
        self._turn_at[pl["turn"]] = len(self._turns)
        self._turns.append(
            {"turn": pl["turn"], "name": pl["name"], "kind": pl["kind"], "status": "running"}
        )

    def _turn_completed(self, pl: Mapping[str, Any], *_: Any) -> None:
        i = self._turn_at.get(pl["turn"])
        if i is not None:
            _mutable(self._turns, i)["status"] = pl["status"]

    def _call(self, call_id: str) -> dict[str, Any] | None:
        i = self._call_at.get(call_id)
        return None if i is None else _mutable(self._calls, i)

    def _requested(self, pl: Mapping[str, Any], e: Mapping[str, Any]) -> None:
        call_id = pl["call_id"]
        self._call_at[call_id] = len(self._calls)
        self._calls.append(
            {
                "call_id": call_id,
                "turn": pl["turn"],
                "tool": pl["tool"],
                "status": "requested",
                "exit_code": None,
                "error": None,
                "message": "",
                "output": "",
                "planned_count": 0,
            }
        )
        self._entry_at[call_id] = len(self._entries)
        self._entries.append(
            {
                "call_id": call_id,
                "seq": e["seq"],
                "tool": pl["tool"],
                "args": pl["args"],
                "decision": None,
                "rule_id": None,
                "policy_hash": None,
                "reason": "",
                "decided_by": None,
                "confirmed_by": None,
                "confirmation": None,
            }
        )

    def _decided(self, pl: Mapping[str, Any], e: Mapping[str, Any]) -> None:
        status = _DECIDED[pl["decision"]]
        call = self._call(pl["call_id"])
        if call is not None:
            call["status"] = status
        i = self._entry_at.get(pl["call_id"])
        if i is not None:
            _mutable(self._entries, i).update(
                decision=pl["decision"],
                rule_id=pl["rule_id"],
                seq=e["seq"],
                policy_hash=pl["policy_hash"],
                reason=pl["reason"],
                decided_by=e["actor"],
            )

    def _started(self, pl: Mapping[str, Any], *_: Any) -> None:
        call = self._call(pl["call_id"])
        if call is not None:
            call["status"] = "started"
            call["planned_count"] = pl["planned_count"]

    def _file_changed(self, pl: Mapping[str, Any], *_: Any) -> None:
        self._pending.append(
            PendingChange(
                call_id=pl["call_id"],
                path=pl["path"],
                before_hash=pl["before_hash"],
                after_hash=pl["after_hash"],
                diff=pl["diff"],
            )
        )

    def _confirm(self, call_id: str) -> None:
        """As `_confirm` above: a path changed before keeps its first `before`."""
        if not self._pending:
            return
        mine = [c for c in self._pending if c.call_id == call_id]
        if not mine:
            return
        before, files = self._changed, self._files
        for c in mine:
            change = FileChange(path=c.path, before_hash=c.before_hash, after_hash=c.after_hash)
            if c.path in before:
                files = [
                    change.model_copy(update={"before_hash": f.before_hash})
                    if f.path == c.path
                    else f
                    for f in files
                ]
            else:
                files.append(change)
        self._files = files
        self._changed = before | {c.path for c in mine}
        self._pending = [c for c in self._pending if c.call_id != call_id]
        self._patch.extend(c.diff for c in mine)

    def _completed(self, pl: Mapping[str, Any], e: Mapping[str, Any]) -> None:
        call = self._call(pl["call_id"])
        if call is not None:
            call.update(status="completed", exit_code=pl["exit_code"], output=pl["output"])
        self._confirm(pl["call_id"])
        sums = self._sums
        self._count(pl["tool"], e["occurred_at"])
        sums["output_bytes"] += pl["output_bytes"]
        sums["bytes_written"] += pl["bytes_written"]
        if pl["tool"] == "shell":
            sums["shell_cpu_s"] += pl["cpu_s"]
            sums["shell_wall_s"] += pl["duration_s"]

    def _failed(self, pl: Mapping[str, Any], e: Mapping[str, Any]) -> None:
        call = self._call(pl["call_id"])
        if call is not None:
            call.update(
                status="failed", error=pl["error"], message=pl["message"], output=pl["output"]
            )
        if self._pending:
            self._pending = [c for c in self._pending if c.call_id != pl["call_id"]]
        sums = self._sums
        self._count(pl["tool"], e["occurred_at"])
        sums["tool_failures"] += 1
        sums["output_bytes"] += pl["output_bytes"]
        if pl["tool"] == "shell":
            sums["shell_cpu_s"] += pl["cpu_s"]
            sums["shell_wall_s"] += pl["duration_s"]

    def _count(self, tool: str, at: datetime | str) -> None:
        self._quota_changed = True
        self._counts[tool] = self._counts.get(tool, 0) + 1
        recent, tools = self._recent, self._recent_tools
        recent.append(_ts(at))
        tools.append(tool)
        if len(recent) > 2 * RATE_WINDOW:
            del recent[:-RATE_WINDOW]
            del tools[:-RATE_WINDOW]

    def _session_completed(self, pl: Mapping[str, Any], *_: Any) -> None:
        self._scalars["status"] = "completed"

    def _agent(self, type_: str, pl: Mapping[str, Any]) -> None:
        """Agent events are few (one per model call): fold them with the
        definition itself instead of a second implementation."""
        payload = p.PAYLOAD_TYPES[type_].model_validate(dict(pl))
        current = self._scalars.get("agent", self._session.agent)
        self._scalars["agent"] = fold_agent(current, payload)
        if type_ == "ModelResponded":
            sums = self._sums
            self._quota_changed = True
            sums["tokens_in"] += payload.input_tokens  # type: ignore[attr-defined]
            sums["tokens_out"] += payload.output_tokens  # type: ignore[attr-defined]
            sums["tokens_cached"] += payload.cached_tokens or 0  # type: ignore[attr-defined]
            sums["model_calls"] += 1

    def _session_failed(self, pl: Mapping[str, Any], *_: Any) -> None:
        self._scalars.update(status="failed", error=f"{pl['error']}: {pl['message']}")

    # -- the frozen result ---------------------------------------------------------

    def result(self) -> Projections:
        s = self._session
        session = SessionState.model_construct(
            **{
                **s.__dict__,
                **self._scalars,
                "turns": _frozen(Turn, self._turns),
                "calls": _frozen(ToolCall, self._calls),
                "files_changed": tuple(self._files),
                "changed_paths": frozenset(self._changed),
                "pending": tuple(self._pending),
                "patch": "".join(self._patch),
                "confirmations": _frozen(Confirmation, self._confirmations),
                "last_seq": self.last_seq,
            }
        )
        quota = self._quota
        if self._quota_changed:
            quota = QuotaUsage.model_construct(
                **{
                    **quota.__dict__,
                    **self._sums,
                    "tool_calls": tuple(sorted(self._counts.items())),
                    "recent_calls": tuple(self._recent[-RATE_WINDOW:]),
                    "recent_tools": tuple(self._recent_tools[-RATE_WINDOW:]),
                }
            )
        ledger = PermissionLedger.model_construct(entries=_frozen(LedgerEntry, self._entries))
        return Projections.model_construct(session=session, quota=quota, ledger=ledger)


_ON: dict[str, Callable[..., None]] = {
    "PolicyAttached": Folder._policy_attached,
    "ConfirmationRequested": Folder._confirmation_requested,
    "ConfirmationGranted": Folder._granted,
    "ConfirmationDenied": Folder._denied,
    "SessionStarted": Folder._session_started,
    "TurnStarted": Folder._turn_started,
    "TurnCompleted": Folder._turn_completed,
    "ToolCallRequested": Folder._requested,
    "PermissionDecided": Folder._decided,
    "ToolCallStarted": Folder._started,
    "FileChanged": Folder._file_changed,
    "ToolCallCompleted": Folder._completed,
    "ToolCallFailed": Folder._failed,
    "SessionCompleted": Folder._session_completed,
    "SessionFailed": Folder._session_failed,
    **{t: (lambda f, pl, e, _t=t: f._agent(_t, pl)) for t in _AGENT_EVENTS},
}

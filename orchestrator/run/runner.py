"""Running one step of one session: the events around a tool invocation.

Tasks call this; it loads state from the store (never from memory), decides,
runs the tool and appends what happened (DESIGN.md, "A tool invocation, step
by step"). A step with effects is two appends:

    1. TurnStarted, ToolCallRequested, PermissionDecided, ToolCallStarted,
       FileChanged... (the planned effects)
    2. ToolCallCompleted | ToolCallFailed, TurnCompleted [, SessionCompleted | SessionFailed]

A step with nothing to protect (a search, a file step that changes no file)
is one append of both, keyed as the first; nothing of it can be half done.

Idempotency keys are derived from the session and the step, so a redelivered
task finds its batches stored and appends nothing twice. A task redelivered
after phase 1 but before phase 2 (the worker died mid-call) compares the
recorded file hashes with the disk: it finishes what was planned, re-runs a
step marked idempotent, and otherwise fails the call as interrupted; either
way it first records ToolCallRedelivered (attempt n, counted in the log). A
shell call runs again on its untouched workspace. A task redelivered after
phase 2 was stored lets the tool finish its commit (`_settle`: the shell's
changeset kept on disk until applied).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from events import payloads as p
from events.envelope import Event, NewEvent, utcnow
from events.errors import SequenceConflict
from events.projections import Projections, SessionState, fold
from events.replay import SNAPSHOT_EVERY, SNAPSHOT_VERSION, job_state, job_state_at, load
from events.store import EventStore
from orchestrator.config.secrets import known_values
from orchestrator.errors import ToolError
from orchestrator.guard import decision, policy
from orchestrator.guard.decision import Verdict
from orchestrator.guard.policy import Policy
from orchestrator.ops import logs, tracing
from orchestrator.ops.observer import NO_OBSERVER, Observer
from orchestrator.run import calls, job_stream
from orchestrator.run.calls import Call, PolicyRefused, RateLimitedStep
from orchestrator.run.steps import Step
from orchestrator.run.templates import render_step
from orchestrator.run.ticket import Ticket
from orchestrator.tools.base import Plan, ToolResult
from orchestrator.tools.interface import ToolCall, summarize
from orchestrator.tools.registry import TOOLS, Registry

# Names callers import from here since before the split.
__all__ = [
    "CANCELLED",
    "Plan",
    "PolicyRefused",
    "RateLimitedStep",
    "Runner",
    "Ticket",
    "job_state",
    "job_state_at",
    "plan",
    "summarize",
]

CONFLICT_RETRIES = 20
_log = logs.get_logger(__name__)
CANCELLED = "JobCancelled"  # the error of a session its job's cancellation ended
MEMO_SESSIONS = 1024  # folds of running sessions kept per runner (one per worker process)


@dataclass
class Runner:
    store: EventStore
    actor: str
    policy: Policy = policy.DEFAULT_POLICY
    # Keyword-only, so `Runner(store, actor[, policy])` keeps working: what
    # the runner reports to (a composition root passes the metrics), which
    # tool runs which step kind, and the settings values the tools need.
    observer: Observer = field(default=NO_OBSERVER, kw_only=True)
    tools: Registry = field(default=TOOLS, kw_only=True)
    settings: Any = field(default=None, kw_only=True)  # what the network tools read

    # -- helpers -----------------------------------------------------------

    _memo: OrderedDict[str, Projections] = field(
        default_factory=OrderedDict, init=False, repr=False
    )
    _policies: dict[str, Policy] = field(default_factory=dict, init=False, repr=False)

    def policy_of(self, s: SessionState) -> Policy:
        """The policy recorded for the session (PolicyAttached); sessions
        recorded before policies were attached fall back to the runner's."""
        if s.policy is None:
            return self.policy
        found = self._policies.get(s.policy_hash)
        if found is None:
            found = self._policies[s.policy_hash] = policy.parse_policy(
                s.policy, f"session {s.session_id}"
            )
        return found

    def _policy_doc(self, doc: dict[str, Any] | None, job_id: str) -> Policy:
        """A ticket's policy, parsed once per job (every session carries it)."""
        if doc is None:
            return self.policy
        key = "doc:" + hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()
        found = self._policies.get(key)
        if found is None:
            found = self._policies[key] = policy.parse_policy(doc, f"job {job_id}")
        return found

    def hidden(self, s: SessionState) -> Any:
        """What globbing tools must not see under the session's policy."""
        pol = self.policy_of(s)
        return lambda rel: not decision.visible(pol, rel)

    _snapshot_at: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    # Per job: the job stream's seq read so far, and (by, reason) once cancelled.
    _jobs: dict[str, tuple[int, tuple[str, str] | None]] = field(
        default_factory=dict, init=False, repr=False
    )
    # (session, job, seq): the last `load` read the job's tail with that state.
    _read_with: tuple[str, str, int] | None = field(default=None, init=False, repr=False)

    def cancellation(self, job_id: str) -> tuple[str, str] | None:
        """(by, reason) when the job's cancellation was requested, else None.

        Asked before every step, so it reads only the job stream's tail after
        what this runner saw last (one indexed query, usually empty); a
        cancellation, once seen, is remembered: it cannot be taken back."""
        seen, found = self._jobs.get(job_id, (0, None))
        if found is None:
            self._job_tail(job_id, self.store.read_stream(job_id, seen))
        return self._jobs[job_id][1]

    def _job_tail(self, job_id: str, tail: Any) -> None:
        """Note a cancellation among the job stream's events after those seen."""
        self._jobs[job_id] = job_stream.cancel_in(tail, *self._jobs.get(job_id, (0, None)))

    def stop_if_cancelled(
        self, ticket: Ticket, state: Projections, cause: str | None
    ) -> Projections:
        """The session ended (SessionFailed "cancelled by X: reason") when its
        job was cancelled and it has not finished; else `state` unchanged."""
        read_with, self._read_with = self._read_with, None
        if state.session.finished:
            return state
        if read_with == (ticket.session_id, ticket.job_id, state.last_seq):
            cancel = self._jobs[ticket.job_id][1]  # read with this very state, just now
        else:
            cancel = self.cancellation(ticket.job_id)
        if cancel is None:
            return state
        by, reason = cancel
        appended = self._append(
            ticket.session_id,
            [
                p.SessionFailed(
                    error=CANCELLED, message=f"cancelled by {by}: {reason or 'no reason given'}"
                )
            ],
            state.last_seq,
            "session:cancelled",
            ticket.job_id,
            cause,
        )
        return self.absorb(ticket.session_id, state, appended)

    def _append(
        self,
        stream: str,
        payloads: Sequence[Any],
        expected: int | None,
        key: str | None,
        correlation: str,
        causation: str | None,
    ) -> list[Event]:
        return self._append_fresh(stream, payloads, expected, key, correlation, causation)[0]

    def _append_fresh(
        self,
        stream: str,
        payloads: Sequence[Any],
        expected: int | None,
        key: str | None,
        correlation: str,
        causation: str | None,
    ) -> tuple[list[Event], bool]:
        """The stored events, and whether they are ours (False: an idempotent hit
        returned what another delivery of this task stored under the key)."""
        batch = self.batch(payloads, key, correlation, causation)
        stored = self.store.append(stream, batch, expected)
        return stored, bool(stored) and stored[0].event_id == batch[0].event_id

    def batch(
        self, payloads: Sequence[Any], key: str | None, correlation: str, causation: str | None
    ) -> list[NewEvent]:
        """The events of one append by this runner, sharing its key."""
        return [
            NewEvent.create(
                pl,
                actor=self.actor,
                correlation_id=correlation,
                causation_id=causation,
                idempotency_key=key,
            )
            for pl in payloads
        ]

    def load(self, session_id: str, job_id: str | None = None) -> Projections:
        """The session's projections: always the whole stream as stored now.

        Events are immutable, so the fold of a stream's first n events never
        changes: the runner keeps the last fold of each session it touched
        (bounded) and reads only the tail after it, one query instead of a
        snapshot lookup plus a replay. Decisions still come from the store:
        whatever another worker appended is in the tail. With `job_id`, that
        query reads the job's tail too: the step's cancel check
        (`stop_if_cancelled`) then needs no read of its own."""
        memo, self._read_with = self._memo.get(session_id), None
        if memo is None:
            state = load(self.store, session_id)
            self._snapshot_at[session_id] = state.last_seq  # load refreshed it if needed
        elif job_id is None or self._jobs.get(job_id, (0, None))[1] is not None:
            tail = list(self.store.read_stream(session_id, memo.last_seq))
            state = fold(tail, memo) if tail else memo
        else:
            seen = self._jobs.get(job_id, (0, None))[0]
            tail, job = self.store.read_tails([(session_id, memo.last_seq), (job_id, seen)])
            self._job_tail(job_id, job)
            state = fold(tail, memo) if tail else memo
            self._read_with = (session_id, job_id, state.last_seq)
        return self._remember(session_id, state)

    def load_many(self, sessions: Sequence[tuple[str, str | None]]) -> dict[str, Projections]:
        """`load(session_id, job_id)` of each pair; the sessions this runner
        holds no fold of are read in ONE query from their start (`read_tails`)
        instead of a snapshot lookup and a stream read each: a chunk's first
        step, whose streams are new (or hold what a redelivery stored). A
        stream that has reached SNAPSHOT_EVERY events may have a snapshot, and
        a fold from its start would not be `load`'s: it is read by `load`, as
        any warm session is."""
        read: dict[str, Projections] = {}
        cold = [sid for sid in dict.fromkeys(sid for sid, _ in sessions) if sid not in self._memo]
        if len(cold) > 1:
            for sid, tail in zip(cold, self.store.read_tails([(sid, 0) for sid in cold])):
                if len(tail) < SNAPSHOT_EVERY:  # no snapshot can exist yet (`load`, `_remember`)
                    state = fold(tail, Projections.live())
                    self._snapshot_at[sid] = state.last_seq  # as `load` leaves it
                    read[sid] = self._remember(sid, state)
        return {sid: read[sid] if sid in read else self.load(sid, job) for sid, job in sessions}

    def absorb(self, session_id: str, state: Projections, appended: list[Event]) -> Projections:
        """`state` with what we just appended folded in, instead of reading the
        stream again. An idempotent hit returns events another delivery stored:
        fold only those this state has not seen, and read the stream if they
        do not follow on from it (that delivery went further)."""
        new = [e for e in appended if e.seq > state.last_seq]
        if new and new[0].seq != state.last_seq + 1:
            return self.load(session_id)
        return self._remember(session_id, fold(new, state)) if new else state

    def _remember(self, session_id: str, state: Projections) -> Projections:
        memo = self._memo
        memo[session_id] = state
        memo.move_to_end(session_id)
        while len(memo) > MEMO_SESSIONS:
            old, _ = memo.popitem(last=False)
            self._snapshot_at.pop(old, None)
        base = self._snapshot_at.get(session_id, 0)
        if state.last_seq - base >= SNAPSHOT_EVERY:  # as `events.replay.load` does
            self.store.save_snapshot(
                session_id, state.last_seq, SNAPSHOT_VERSION, state.model_dump_json().encode()
            )
            self._snapshot_at[session_id] = state.last_seq
        if state.session.finished:
            # Nothing runs for it any more: a worker that keeps the folds of
            # ended sessions grows with every job until the bound (bench/memory.py).
            del memo[session_id]
            self._snapshot_at.pop(session_id, None)
        return state

    def _retrying(self, fn: Any, *args: Any) -> Any:
        """Run fn; on a lost race reload and decide again (DESIGN.md, projections)."""
        for _ in range(CONFLICT_RETRIES):
            try:
                return fn(*args)
            except SequenceConflict:
                time.sleep(0.01)
        return fn(*args)

    # -- the step ------------------------------------------------------------

    def run_step(
        self,
        ticket: Ticket,
        index: int,
        step: Step,
        *,
        last: bool,
        task_id: str | None = None,
        state: Projections | None = None,
    ) -> str:
        """Run step `index` of the session; returns the session status after it.
        `state`: the session as the caller loaded it a moment ago (the first
        attempt starts from it; a lost race reloads)."""
        given = [state] if state is not None else []
        return self._retrying(  # type: ignore[no-any-return]
            lambda: self._run_step(
                ticket, index, step, last, task_id, given.pop() if given else None
            )
        )

    def _run_step(
        self,
        ticket: Ticket,
        index: int,
        step: Step,
        last: bool,
        task_id: str | None,
        loaded: Projections | None = None,
    ) -> str:
        sid = ticket.session_id
        cause = f"task:{task_id}" if task_id else None
        state = self.load(sid, ticket.job_id) if loaded is None else loaded

        if state.session.status == "new":
            state = self.absorb(sid, state, self._start(ticket, state, cause))
        state = self.stop_if_cancelled(ticket, state, cause)
        s = state.session
        turn = index + 1
        done = s.call(f"{sid}/{turn}")
        if done is not None and done.status == "completed":
            self._settle(
                Call(
                    ticket,
                    turn,
                    render_step(step, ticket.vars),
                    self.tools[step.kind],
                    Path(s.target),
                    last,
                    cause,
                ),
                s,
            )
        if s.finished:
            self.report(ticket.job_id, sid, s.status, cause, ticket.sessions_total)
            return s.status
        if any(c.turn < turn for c in s.waiting) or any(
            c.turn < turn and c.status == "asked" for c in s.calls
        ):
            # An earlier step waits for its answer, or was answered and the
            # continuation the answer enqueued has not run it yet: that
            # continuation goes on from there. (This chain's later links may
            # run after the answer but before the continuation.)
            return "waiting"
        step = render_step(step, ticket.vars)
        call = Call(ticket, turn, step, self.tools[step.kind], Path(s.target), last, cause)
        logs.bind(job_id=ticket.job_id, session_id=sid, turn_id=turn, tool_call_id=call.call_id)
        called = self._run_call(call, state)
        if called is None:
            return "waiting"
        state = called
        s = state.session
        if not s.finished and last:
            state = self.absorb(
                sid,
                state,
                self._append(
                    sid,
                    [p.SessionCompleted(files_changed=s.files_count)],
                    s.last_seq,
                    "session:completed",
                    ticket.job_id,
                    cause,
                ),
            )
            s = state.session
        if s.finished:
            self.report(ticket.job_id, sid, s.status, cause, ticket.sessions_total)
        return s.status

    def _run_call(self, call: Call, state: Projections) -> Projections | None:
        """The call's phases from wherever the session's record says it is:
        requested and decided, answered, run. None while it waits for an answer."""
        sid = call.ticket.session_id
        recorded = state.session.call(call.call_id)
        planned: Plan | None = None
        if recorded is None:
            planned, appended, fresh = self._phase1(call, state)
            if not fresh:
                planned = None  # another delivery's plan is the one recorded: resume it
            state = self.absorb(sid, state, appended)
            recorded = state.session.call(call.call_id)
        if recorded is not None and recorded.status == "asked":
            answered = self._answered(call, state)
            if answered is None:
                return None
            planned, appended, fresh = answered
            if not fresh:
                planned = None
            state = self.absorb(sid, state, appended)
            recorded = state.session.call(call.call_id)
        if recorded is not None and recorded.status == "started":
            if planned is None:  # not started by this delivery: a new attempt
                state = self.absorb(sid, state, self._redelivered(call, state))
            state = self.absorb(sid, state, self._phase2(call, state, planned))
        return state

    def _redelivered(self, call: Call, state: Projections) -> list[Event]:
        """ToolCallRedelivered: this delivery runs the call again, as attempt
        n (the count kept in the log), after attempt n-1 never finished."""
        recorded = state.session.call(call.call_id)
        before = recorded.attempts if recorded is not None else ()
        n = (before[-1].attempt if before else 1) + 1
        by = before[-1].worker if before else "a worker"
        event = p.ToolCallRedelivered(
            call_id=call.call_id,
            attempt=n,
            reason=f"attempt {n - 1} ({by}) did not finish; {self.actor} runs the call again",
        )
        return self._append_call(call, state, f"attempt:{n}", [event])[0]

    def _settle(self, call: Call, s: SessionState) -> None:
        """A call whose completion is stored: let its tool finish what it held
        back, in case an earlier delivery died between recording the
        completion and committing (the shell's kept changeset; idempotent)."""
        call.tool.commit(self._tool_call(call, s), None)

    def _start(self, ticket: Ticket, state: Projections, cause: str | None) -> list[Event]:
        return self._append(
            ticket.session_id,
            self.start_events(ticket),
            state.last_seq,
            "session:started",
            ticket.job_id,
            cause,
        )

    def start_events(self, ticket: Ticket) -> list[Any]:
        """SessionStarted and PolicyAttached (and SessionFailed when the target
        is missing): the session's first append, keyed "session:started"."""
        workspace = ticket.path or ticket.target
        pol = self._policy_doc(ticket.policy, ticket.job_id)
        tier = policy.strictest_tier(pol.doc.tier, ticket.tier)  # type: ignore[arg-type]
        events: list[Any] = [
            p.SessionStarted(
                job_id=ticket.job_id, target=workspace, steps=ticket.steps, policy=pol.name
            ),
            p.PolicyAttached(
                name=pol.name,
                hash=pol.hash,
                document=pol.document,
                tier=tier,
                elevated_by=ticket.elevated_by,
            ),
        ]
        error = ticket.error
        if error is None and not Path(workspace).is_dir():
            error = f"target {ticket.target} does not exist or is not a directory ({workspace})"
        if error is not None:
            events.append(
                p.SessionFailed(
                    error="TargetNotFound", message=f"{error}; fix the job's targets and resubmit"
                )
            )
        return events

    def _phase1(self, call: Call, state: Projections) -> tuple[Plan | None, list[Event], bool]:
        """TurnStarted ... ToolCallStarted and the planned FileChanged events. A
        call with nothing to protect (a read-only tool, or a file step whose
        plan changes no file) also runs here and its outcome joins the same
        append: one transaction for the whole step, nothing half done to
        recover if the worker dies (the redelivery just runs it again)."""
        planned, events = self.phase1_events(call, state)
        return (planned, *self._append_call(call, state, "start", events))

    def phase1_events(self, call: Call, state: Projections) -> tuple[Plan | None, list[Any]]:
        """The plan (None unless the call is to run) and the events of `_phase1`,
        appended by the caller under `call.key("start")`."""
        args = call.tool.request(call.step)
        s = state.session
        pol = self.policy_of(s)
        started = time.monotonic()
        # Steps are planned first (reads only), so the decision sees every
        # path they would write.
        planned: Plan | None = None
        plan_error: ToolError | None = None
        try:
            planned = call.tool.plan(call.workspace, call.step, self.hidden(s))
        except ToolError as exc:
            plan_error = exc
        verdict = self._decide(call, state, pol, args, planned, plan_error)
        events = calls.requested(call, args, verdict, pol.hash)
        if verdict.decision == "ask":
            # Nothing runs: the session waits for an operator's answer
            # (`orchestrator approve|deny`), which enqueues the continuation.
            events.append(calls.asked(call, verdict))
            planned = None
        elif verdict.decision != "allow":
            events += calls.refused(call, s, verdict)
            planned = None
        else:
            planned, begun = self._begin(call, s, planned, plan_error, started)
            events += begun
        return planned, events

    def _decide(
        self,
        call: Call,
        state: Projections,
        pol: Policy,
        args: dict[str, Any],
        planned: Plan | None,
        plan_error: ToolError | None = None,
    ) -> Verdict:
        """The policy's verdict on the call; a rate limit's "not yet" is
        recorded (RateLimited) and raised for the task to retry later."""
        s = state.session
        touched, found = calls.judged_paths(call, planned, plan_error)
        verdict = decision.decide(
            call.kind,
            args,
            pol,
            tier=s.tier,
            elevated=s.elevated_by is not None,
            usage=calls.usage_of(state),
            now=utcnow(),
            extra_paths=touched,
            secrets=known_values(self.settings),
            facts=found,
        )
        self.observer.permission(verdict.decision, verdict.rule_id)
        if verdict.rule_id.startswith(("rate:", "quota:")) and verdict.decision != "allow":
            self.observer.quota_denied(call.kind, verdict.rule_id)
        if verdict.rule_id.startswith("rate:"):
            limited = p.RateLimited(
                call_id=call.call_id,
                tool=call.kind,
                rate=pol.doc.rate_limits.get(call.kind, ""),
                retry_after_s=verdict.retry_after_s or 0.0,
            )
            self._append(
                call.ticket.session_id, [limited], None, None, call.ticket.job_id, call.cause
            )
            raise RateLimitedStep(verdict.reason, verdict.retry_after_s or 1.0)
        return verdict

    def _append_call(
        self, call: Call, state: Projections, phase: str, events: list[Any]
    ) -> tuple[list[Event], bool]:
        """The call's events of `phase`, appended after `state` under its key."""
        return self._append_fresh(
            call.ticket.session_id,
            events,
            state.last_seq,
            call.key(phase),
            call.ticket.job_id,
            call.cause,
        )

    def _begin(
        self,
        call: Call,
        s: SessionState,
        planned: Plan | None,
        plan_error: ToolError | None,
        started: float,
    ) -> tuple[Plan | None, list[Any]]:
        """An allowed call starts: ToolCallStarted and its planned FileChanged
        events, and for a call with nothing to protect its outcome too."""
        try:
            if plan_error is not None:
                raise plan_error
            if planned is None:
                planned = call.tool.plan(call.workspace, call.step, self.hidden(s))
        except ToolError as exc:
            self._observed(call.kind, "failed", time.monotonic() - started, exc.error)
            return None, calls.failed(call, s, exc, time.monotonic() - started)
        events = calls.started(call, planned)
        if call.tool.effect_free(call.step, planned):
            events += self._outcome(call, s, planned)[0]
        return planned, events

    def _answered(
        self, call: Call, state: Projections
    ) -> tuple[Plan | None, list[Event], bool] | None:
        """A call that asked: None while nobody answered; else the events of
        the answer (a grant starts exactly this call, a denial fails the step)."""
        s = state.session
        answer = s.confirmation(call.call_id)
        if answer is None or answer.status == "pending":
            return None
        planned: Plan | None = None
        if answer.status == "denied":
            events = calls.failed(call, s, calls.answer_refused(answer), 0.0)[1:]
        else:
            planned, events = self._begin(call, s, None, None, time.monotonic())
        return (planned, *self._append_call(call, state, "answered", events))

    def _phase2(self, call: Call, state: Projections, planned: Plan | None) -> list[Event]:
        """Run the started call and record its outcome; then let the tool
        commit what it held back until the record was stored (the shell's
        changeset). A stale append (another delivery recorded the end first)
        commits nothing: its own changeset is the one recorded."""
        events, result = self._outcome(call, state.session, planned)
        appended, fresh = self._append_call(call, state, "end", events)
        if result is not None:
            done = call.tool.commit if fresh else call.tool.discard
            done(self._tool_call(call, state.session), result)
        return appended

    def _outcome(
        self, call: Call, s: SessionState, planned: Plan | None
    ) -> tuple[list[Any], ToolResult | None]:
        """Run the started call: ToolCallCompleted or ToolCallFailed, TurnCompleted,
        and on the last step the session's end (same transaction); with the
        result when the call completed."""
        started = time.monotonic()
        try:
            with tracing.span(
                f"tool {call.kind}",
                **{"orchestrator.tool": call.kind, "orchestrator.tool_call_id": call.call_id},
            ):
                result = call.tool.run(self._tool_call(call, s), call.step, planned)
        except ToolError as exc:
            self._observed(call.kind, "failed", time.monotonic() - started, exc.error)
            return calls.failed(call, s, exc, time.monotonic() - started), None
        elapsed = time.monotonic() - started
        self._observed(call.kind, "ok" if result.exit_code == 0 else "error", elapsed)
        return calls.completed(call, s, planned, result, time.monotonic() - started), result

    def _tool_call(self, call: Call, s: SessionState) -> ToolCall:
        return ToolCall(
            workspace=call.workspace,
            call_id=call.call_id,
            session=s,
            policy=self.policy_of(s),
            hidden=self.hidden(s),
            store=self.store,
            actor=self.actor,
            observer=self.observer,
            settings=self.settings,
            toolchains=call.ticket.toolchains,
            cancelled=lambda: self.stop_reason(
                call.ticket.job_id, call.ticket.session_id, call.call_id
            ),
        )

    def stop_reason(self, job_id: str, session_id: str, call_id: str) -> str | None:
        """Why a running call must stop now, asked while it runs: its job was
        cancelled (`orchestrator cancel`, the API), or its end was recorded
        by someone else (a chat's Ctrl-C). Each is a read of a stream's tail;
        a store that cannot answer stops nothing."""
        try:
            cancel = self.cancellation(job_id)
            if cancel is not None:
                by, reason = cancel
                return f"its job was cancelled by {by}: {reason or 'no reason given'}"
            recorded = self.load(session_id).session.call(call_id)
        except Exception as exc:  # the call goes on; its own end is recorded later
            _log.warning("could not read whether to stop", call_id=call_id, error=str(exc))
            return None
        if recorded is not None and recorded.status != "started":
            return f"its end was recorded while it ran ({recorded.status}, e.g. a chat's Ctrl-C)"
        return None

    def _observed(self, tool: str, outcome: str, seconds: float, error: str | None = None) -> None:
        """A tool call ran (or failed to): its metrics and its log line."""
        self.observer.tool_call(tool, outcome, seconds, error)
        _log.info("tool call", tool=tool, outcome=outcome, seconds=round(seconds, 6), error=error)

    # -- the job ---------------------------------------------------------------

    def report(
        self, job_id: str, session_id: str, status: str, cause: str | None, total: int = 0
    ) -> None:
        """Record on the job stream that a session ended; complete the job after the last."""
        self._retrying(
            job_stream.finished, self._append, self.store, job_id, session_id, status, cause, total
        )


def plan(workspace: Path, step: Step, hidden: Any = None, tools: Registry = TOOLS) -> Plan:
    """The file edits a step will make (reads only; raises ToolError).
    `hidden`: files the policy denies, which a glob never picks."""
    return tools[step.kind].plan(workspace, step, hidden)

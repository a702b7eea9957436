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
step marked idempotent, and otherwise fails the call as interrupted.
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
from pydantic import BaseModel, ConfigDict

from events import payloads as p
from events.envelope import Event, NewEvent, utcnow
from events.errors import SequenceConflict
from events.projections import JobState, Projections, SessionState, apply_job, fold
from events.replay import SNAPSHOT_EVERY, SNAPSHOT_VERSION, load
from events.store import SqlEventStore
from orchestrator.errors import ToolError
from orchestrator.guard import decision, policy
from orchestrator.ops import logs, metrics, tracing
from orchestrator.run.steps import (
    NETWORK_STEPS,
    DeleteStep,
    ListStep,
    PatchStep,
    ReadStep,
    ReplaceStep,
    SearchStep,
    ShellStep,
    Step,
    WriteStep,
)
from orchestrator.tools import files, replace, search, shell
from orchestrator.tools.base import FileEdit, ToolResult, content_hash
from orchestrator.tools.jail import real_paths


def _retry_events(call_id: str, result: Any) -> list[Any]:
    """ToolCallRetried for every retry a network call made (none for others)."""
    return [
        p.ToolCallRetried(
            call_id=call_id, attempt=r.attempt, reason=r.reason, delay_s=r.delay_s, host=r.host
        )
        for r in getattr(result, "retries", ())
    ]


def _masked(text: str) -> str:
    """Tool output and error text as it may enter an event: every secret this
    process knows (orchestrator.config.secrets) and every credential shape masked."""
    from orchestrator.config.secrets import known_values
    from orchestrator.guard.masking import mask

    return mask(text, known_values()) if text else text


CONFLICT_RETRIES = 20
_log = logs.get_logger(__name__)
CANCELLED = "JobCancelled"  # the error of a session its job's cancellation ended
MEMO_SESSIONS = 1024  # folds kept per runner (one per worker process)


class Ticket(BaseModel):
    """What a step task needs to start its session (sent in the task message)."""

    model_config = ConfigDict(frozen=True)
    job_id: str
    session_id: str
    target: str  # display name
    path: str | None  # absolute workspace path, None when it did not resolve
    error: str | None = None  # why the target cannot run
    steps: tuple[str, ...]
    sessions_total: int = 0  # sessions in the job: the one that finishes last completes it
    # The session's policy (a PolicyDoc as JSON data, already combined from the
    # job spec, `--policy` and configuration), the caller's tier, and who
    # elevated the session. Recorded as PolicyAttached when the session starts;
    # later steps decide from that event, not from this message.
    policy: dict[str, Any] | None = None
    tier: str | None = None
    elevated_by: str | None = None
    # The job's `agent:` block (jobspec.AgentSpec as JSON data, its script
    # read into `turns`): the agent works on the target after the steps.
    agent: dict[str, Any] | None = None


class Interrupted(ToolError):
    """The worker died while an effectful call was running."""


class RateLimitedStep(ToolError):
    """A rate limit says not yet: the task retries after `retry_after_s`."""

    transient = True

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PolicyRefused(ToolError):
    """The policy denied the call, or an operator denied its confirmation:
    nothing ran."""

    exit_code = 3

    @classmethod
    def of(cls, verdict: decision.Verdict) -> PolicyRefused:
        return cls(
            f"denied by rule {verdict.rule_id}: {verdict.reason}. Nothing ran; "
            "change the step, or the policy if it should be allowed"
        )


@dataclass
class Runner:
    store: SqlEventStore
    actor: str
    policy: policy.Policy = policy.DEFAULT_POLICY

    # -- helpers -----------------------------------------------------------

    _memo: OrderedDict[str, Projections] = field(
        default_factory=OrderedDict, init=False, repr=False
    )
    _policies: dict[str, policy.Policy] = field(default_factory=dict, init=False, repr=False)

    def policy_of(self, s: SessionState) -> policy.Policy:
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

    def _policy_doc(self, doc: dict[str, Any] | None, job_id: str) -> policy.Policy:
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

    def cancellation(self, job_id: str) -> tuple[str, str] | None:
        """(by, reason) when the job's cancellation was requested, else None.

        Asked before every step, so it reads only the job stream's tail after
        what this runner saw last (one indexed query, usually empty); a
        cancellation, once seen, is remembered: it cannot be taken back."""
        seen, found = self._jobs.get(job_id, (0, None))
        if found is None:
            for e in self.store.read_stream(job_id, seen):
                seen = e.seq
                if isinstance(e.payload, p.JobCancelRequested) and found is None:
                    found = (e.payload.by, e.payload.reason)
            self._jobs[job_id] = (seen, found)
        return found

    def stop_if_cancelled(
        self, ticket: Ticket, state: Projections, cause: str | None
    ) -> Projections:
        """The session ended (SessionFailed "cancelled by X: reason") when its
        job was cancelled and it has not finished; else `state` unchanged."""
        if state.session.finished:
            return state
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
        batch = [
            NewEvent.create(
                pl,
                actor=self.actor,
                correlation_id=correlation,
                causation_id=causation,
                idempotency_key=key,
            )
            for pl in payloads
        ]
        stored = self.store.append(stream, batch, expected)
        return stored, bool(stored) and stored[0].event_id == batch[0].event_id

    def load(self, session_id: str) -> Projections:
        """The session's projections: always the whole stream as stored now.

        Events are immutable, so the fold of a stream's first n events never
        changes: the runner keeps the last fold of each session it touched
        (bounded) and reads only the tail after it, one query instead of a
        snapshot lookup plus a replay. Decisions still come from the store:
        whatever another worker appended is in the tail."""
        memo = self._memo.get(session_id)
        if memo is None:
            state = load(self.store, session_id)
            self._snapshot_at[session_id] = state.last_seq  # load refreshed it if needed
        else:
            tail = list(self.store.read_stream(session_id, memo.last_seq))
            state = fold(tail, memo) if tail else memo
        return self._remember(session_id, state)

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
        self, ticket: Ticket, index: int, step: Step, *, last: bool, task_id: str | None = None
    ) -> str:
        """Run step `index` of the session; returns the session status after it."""
        return self._retrying(self._run_step, ticket, index, step, last, task_id)  # type: ignore[no-any-return]

    def _run_step(
        self, ticket: Ticket, index: int, step: Step, last: bool, task_id: str | None
    ) -> str:
        sid = ticket.session_id
        cause = f"task:{task_id}" if task_id else None
        state = self.load(sid)

        def advance(appended: list[Event]) -> Projections:
            return self.absorb(sid, state, appended)

        if state.session.status == "new":
            state = advance(self._start(ticket, state, cause))
        state = self.stop_if_cancelled(ticket, state, cause)
        s = state.session
        if s.finished:
            self.report(ticket.job_id, sid, s.status, cause, ticket.sessions_total)
            return s.status
        turn = index + 1
        if any(c.turn < turn for c in s.waiting) or any(
            c.turn < turn and c.status == "asked" for c in s.calls
        ):
            # An earlier step waits for its answer, or was answered and the
            # continuation the answer enqueued has not run it yet: that
            # continuation goes on from there. (This chain's later links may
            # run after the answer but before the continuation.)
            return "waiting"
        call_id = f"{sid}/{turn}"
        logs.bind(job_id=ticket.job_id, session_id=sid, turn_id=turn, tool_call_id=call_id)
        call = s.call(call_id)
        workspace = Path(s.target)
        planned: Plan | None = None
        if call is None:
            planned, appended, fresh = self._phase1(
                ticket, state, turn, call_id, step, workspace, last, cause
            )
            if not fresh:
                planned = None  # another delivery's plan is the one recorded: resume it
            state = advance(appended)
            call = state.session.call(call_id)
        if call is not None and call.status == "asked":
            answered = self._answered(ticket, state, turn, call_id, step, workspace, last, cause)
            if answered is None:
                return "waiting"
            planned, appended, fresh = answered
            if not fresh:
                planned = None
            state = advance(appended)
            call = state.session.call(call_id)
        if call is not None and call.status == "started":
            state = advance(
                self._phase2(ticket, state, turn, call_id, step, workspace, last, cause, planned)
            )
        s = state.session
        if not s.finished and last:
            state = advance(
                self._append(
                    sid,
                    [p.SessionCompleted(files_changed=len(s.files_changed))],
                    s.last_seq,
                    "session:completed",
                    ticket.job_id,
                    cause,
                )
            )
            s = state.session
        if s.finished:
            self.report(ticket.job_id, sid, s.status, cause, ticket.sessions_total)
        return s.status

    def _start(self, ticket: Ticket, state: Projections, cause: str | None) -> list[Event]:
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
        return self._append(
            ticket.session_id, events, state.last_seq, "session:started", ticket.job_id, cause
        )

    def _phase1(
        self,
        ticket: Ticket,
        state: Projections,
        turn: int,
        call_id: str,
        step: Step,
        workspace: Path,
        last: bool,
        cause: str | None,
    ) -> tuple[Plan | None, list[Event], bool]:
        """TurnStarted ... ToolCallStarted and the planned FileChanged events. A
        call with nothing to protect (a read-only tool, or a file step whose
        plan changes no file) also runs here and its outcome joins the same
        append: one transaction for the whole step, nothing half done to
        recover if the worker dies (the redelivery just runs it again)."""
        args = summarize(step)
        s = state.session
        pol = self.policy_of(s)
        hidden = self.hidden(s)
        started = time.monotonic()
        # File steps are planned first (reads only), so the decision sees every
        # path they would write.
        planned: Plan | None = None
        plan_error: ToolError | None = None
        if isinstance(step, (ReplaceStep, WriteStep, PatchStep, DeleteStep)):
            try:
                planned = plan(workspace, step, hidden)
            except ToolError as exc:
                plan_error = exc
        verdict = decision.decide(
            step.kind,
            args,
            pol,
            tier=s.tier,
            elevated=s.elevated_by is not None,
            usage=usage_of(state),
            now=utcnow(),
            extra_paths=_touched(workspace, step, planned),
        )
        metrics.permission(verdict.decision, verdict.rule_id)
        if verdict.rule_id.startswith(("rate:", "quota:")) and verdict.decision != "allow":
            metrics.quota_denied(step.kind, verdict.rule_id)
        if verdict.rule_id.startswith("rate:"):
            self._append(
                ticket.session_id,
                [
                    p.RateLimited(
                        call_id=call_id,
                        tool=step.kind,
                        rate=pol.doc.rate_limits.get(step.kind, ""),
                        retry_after_s=verdict.retry_after_s or 0.0,
                    )
                ],
                None,
                None,
                ticket.job_id,
                cause,
            )
            raise RateLimitedStep(verdict.reason, verdict.retry_after_s or 1.0)
        events: list[Any] = [
            p.TurnStarted(turn=turn, name=step.label, kind=step.kind),
            p.ToolCallRequested(call_id=call_id, turn=turn, tool=step.kind, args=args),
            p.PermissionDecided(
                call_id=call_id,
                decision=verdict.decision,  # type: ignore[arg-type]
                rule_id=verdict.rule_id,
                policy_hash=pol.hash,
                reason=verdict.reason,
            ),
        ]
        if verdict.decision == "ask":
            # Nothing runs: the session waits for an operator's answer
            # (`orchestrator approve|deny`), which enqueues the continuation.
            events.append(
                p.ConfirmationRequested(
                    call_id=call_id,
                    turn=turn,
                    tool=step.kind,
                    rule_id=verdict.rule_id,
                    reason=verdict.reason,
                )
            )
            return (
                None,
                *self._append_fresh(
                    ticket.session_id,
                    events,
                    state.last_seq,
                    f"step:{turn}:start",
                    ticket.job_id,
                    cause,
                ),
            )
        if verdict.decision != "allow":
            # No ToolCallFailed: the call never started, so it costs no quota;
            # the ledger and the session's error say why.
            if verdict.rule_id.startswith("quota:"):
                events.append(
                    p.QuotaExceeded(
                        call_id=call_id,
                        tool=step.kind,
                        rule_id=verdict.rule_id,
                        detail=verdict.reason,
                    )
                )
            refused = PolicyRefused.of(verdict)
            events += self._failure(state.session, turn, call_id, step, refused, 0.0, last)[1:]
            return (
                None,
                *self._append_fresh(
                    ticket.session_id,
                    events,
                    state.last_seq,
                    f"step:{turn}:start",
                    ticket.job_id,
                    cause,
                ),
            )
        planned, begun = self._begin(
            s, turn, call_id, step, workspace, last, planned, plan_error, started
        )
        appended, fresh = self._append_fresh(
            ticket.session_id,
            events + begun,
            state.last_seq,
            f"step:{turn}:start",
            ticket.job_id,
            cause,
        )
        return planned, appended, fresh

    def _begin(
        self,
        s: SessionState,
        turn: int,
        call_id: str,
        step: Step,
        workspace: Path,
        last: bool,
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
                planned = plan(workspace, step, self.hidden(s))
        except ToolError as exc:
            _observed(step.kind, "failed", time.monotonic() - started, exc.error)
            return None, self._failure(
                s, turn, call_id, step, exc, time.monotonic() - started, last
            )
        events: list[Any] = [
            p.ToolCallStarted(
                call_id=call_id, planned_count=planned.count, trace_id=tracing.current_trace_id()
            )
        ]
        events += [
            p.FileChanged(
                call_id=call_id,
                path=e.path,
                before_hash=e.before_hash,
                after_hash=e.after_hash,
                diff=_diff(e),
            )
            for e in planned.edits
        ]
        if effect_free(step, planned):
            events += self._outcome(s, turn, call_id, step, workspace, last, planned)
        return planned, events

    def _answered(
        self,
        ticket: Ticket,
        state: Projections,
        turn: int,
        call_id: str,
        step: Step,
        workspace: Path,
        last: bool,
        cause: str | None,
    ) -> tuple[Plan | None, list[Event], bool] | None:
        """A call that asked: None while nobody answered; else the events of
        the answer (a grant starts exactly this call, a denial fails the step)."""
        s = state.session
        answer = s.confirmation(call_id)
        if answer is None or answer.status == "pending":
            return None
        key = f"step:{turn}:answered"
        if answer.status == "denied":
            refused = PolicyRefused(
                f"denied by {answer.by}"
                + (f" ({answer.answer})" if answer.answer else "")
                + f" when asked under rule "
                f"{answer.rule_id}: {answer.reason}. Nothing ran"
            )
            events = self._failure(s, turn, call_id, step, refused, 0.0, last)[1:]
            return (
                None,
                *self._append_fresh(
                    ticket.session_id, events, state.last_seq, key, ticket.job_id, cause
                ),
            )
        planned, events = self._begin(
            s, turn, call_id, step, workspace, last, None, None, time.monotonic()
        )
        return (
            planned,
            *self._append_fresh(
                ticket.session_id, events, state.last_seq, key, ticket.job_id, cause
            ),
        )

    def _phase2(
        self,
        ticket: Ticket,
        state: Projections,
        turn: int,
        call_id: str,
        step: Step,
        workspace: Path,
        last: bool,
        cause: str | None,
        planned: Plan | None,
    ) -> list[Event]:
        events = self._outcome(state.session, turn, call_id, step, workspace, last, planned)
        return self._append(
            ticket.session_id, events, state.last_seq, f"step:{turn}:end", ticket.job_id, cause
        )

    def _outcome(
        self,
        s: SessionState,
        turn: int,
        call_id: str,
        step: Step,
        workspace: Path,
        last: bool,
        planned: Plan | None,
    ) -> list[Any]:
        """Run the started call: ToolCallCompleted or ToolCallFailed, TurnCompleted,
        and on the last step the session's end (same transaction)."""
        started = time.monotonic()
        try:
            with tracing.span(
                f"tool {step.kind}",
                **{"orchestrator.tool": step.kind, "orchestrator.tool_call_id": call_id},
            ):
                result = execute(
                    workspace,
                    step,
                    s,
                    call_id,
                    planned,
                    self.hidden(s),
                    self.policy_of(s),
                    store=self.store,
                    actor=self.actor,
                )
        except ToolError as exc:
            _observed(step.kind, "failed", time.monotonic() - started, exc.error)
            return self._failure(s, turn, call_id, step, exc, time.monotonic() - started, last)
        _observed(step.kind, "ok" if result.exit_code == 0 else "error", time.monotonic() - started)
        events: list[Any] = [
            *_retry_events(call_id, result),
            p.ToolCallCompleted(
                call_id=call_id,
                tool=step.kind,
                exit_code=result.exit_code,
                duration_s=round(result.duration_s or time.monotonic() - started, 6),
                cpu_s=round(result.cpu_s, 6),
                output=_masked(result.output),
                output_bytes=result.output_bytes,
                output_digest=_digest(_masked(result.output)),
                bytes_written=_written(result),
                count=result.count,
            ),
            p.TurnCompleted(turn=turn, status="ok"),
        ]
        if last:
            # What the fold of ToolCallCompleted will make of files_changed.
            mine = {c.path for c in s.pending if c.call_id == call_id}
            if planned is not None:
                mine |= {e.path for e in planned.edits}
            events.append(p.SessionCompleted(files_changed=len(s.changed_paths | mine)))
        return events

    def _failure(
        self,
        s: SessionState,
        turn: int,
        call_id: str,
        step: Step,
        exc: ToolError,
        elapsed: float,
        last: bool,
    ) -> list[Any]:
        result: ToolResult | None = getattr(exc, "result", None)
        events: list[Any] = [
            *_retry_events(call_id, result),
            p.ToolCallFailed(
                call_id=call_id,
                tool=step.kind,
                error=exc.error,
                message=_masked(str(exc)),
                duration_s=round(result.duration_s if result else elapsed, 6),
                cpu_s=round(result.cpu_s, 6) if result else 0.0,
                output=_masked(result.output) if result else "",
                output_bytes=result.output_bytes if result else 0,
                retryable=exc.transient,
            ),
            p.TurnCompleted(turn=turn, status="failed"),
        ]
        if not step.continue_on_error:
            events.append(
                p.SessionFailed(
                    error=exc.error, message=_masked(f"step {turn} ({step.label}) failed: {exc}")
                )
            )
        elif last:
            events.append(p.SessionCompleted(files_changed=len(s.files_changed)))
        return events

    # -- the job ---------------------------------------------------------------

    def report(
        self, job_id: str, session_id: str, status: str, cause: str | None, total: int = 0
    ) -> None:
        """Record on the job stream that a session ended; complete the job after the last."""
        self._retrying(self._report, job_id, session_id, status, cause, total)

    def _report(
        self, job_id: str, session_id: str, status: str, cause: str | None, total: int
    ) -> None:
        # SessionFinished is keyed by session, so the job stream holds exactly
        # one per session after JobSubmitted: whoever lands at seq total+1 was
        # the last to finish and completes the job (no need to read it all).
        stored = self._append(
            job_id,
            [p.SessionFinished(session_id=session_id, status=status)],  # type: ignore[arg-type]
            None,
            f"finished:{session_id}",
            job_id,
            cause,
        )
        if total and stored[-1].seq < total + 1:
            return
        job = job_state(self.store, job_id)
        if job.all_finished and job.status == "running":
            failed = job.failed
            self._append(
                job_id,
                [
                    p.JobCompleted(
                        status="failed" if failed else "completed",
                        sessions_completed=len(job.finished) - failed,
                        sessions_failed=failed,
                    )
                ],
                None,
                "job:completed",
                job_id,
                cause,
            )


def _observed(tool: str, outcome: str, seconds: float, error: str | None = None) -> None:
    """A tool call ran (or failed to): its metrics and its log line."""
    metrics.tool_call(tool, outcome, seconds)
    if error is not None:
        metrics.tool_error(tool, error)
    _log.info("tool call", tool=tool, outcome=outcome, seconds=round(seconds, 6), error=error)


def job_state(store: SqlEventStore, job_id: str) -> JobState:
    state = JobState()
    for e in store.read_stream(job_id):
        state = apply_job(state, e)
    return state


# -- tools, by step kind -------------------------------------------------------


def summarize(step: Step) -> dict[str, Any]:
    """The request's arguments as recorded: bulky bodies replaced by digest and size."""
    args = step.model_dump(mode="json", exclude_none=True)
    for bulky in ("content", "diff"):
        if bulky in args:
            data = args.pop(bulky).encode()
            args[f"{bulky}_sha256"] = hashlib.sha256(data).hexdigest()
            args[f"{bulky}_bytes"] = len(data)
    return args


@dataclass(frozen=True)
class Plan:
    edits: list[FileEdit]
    count: int


def effect_free(step: Step, planned: Plan) -> bool:
    """Whether running the call can leave nothing half done: a read-only tool,
    or a file step whose plan changes no file. Shell commands never are."""
    if isinstance(step, (SearchStep, ReadStep, ListStep, *NETWORK_STEPS)):
        return True
    return not isinstance(step, ShellStep) and not planned.edits


def usage_of(state: Projections) -> decision.Usage:
    """What quotas and rate limits are decided on, from the projections."""
    q = state.quota
    return decision.Usage(
        tool_calls=dict(q.tool_calls),
        cpu_s=q.shell_cpu_s,
        wall_s=q.shell_wall_s,
        bytes_written=q.bytes_written,
        files_changed=len(state.session.files_changed),
        recent=q.recent_by_tool(),
    )


def plan(workspace: Path, step: Step, hidden: Any = None) -> Plan:
    """The file edits an effectful step will make (reads only; raises ToolError).
    `hidden`: files the policy denies, which a glob never picks."""
    if isinstance(step, ReplaceStep):
        edits, count = replace.plan_replace(workspace, step, hidden)
        return Plan(edits, count)
    if isinstance(step, WriteStep):
        edits = files.plan_write(workspace, step)
    elif isinstance(step, PatchStep):
        edits = files.plan_patch(workspace, step)
    elif isinstance(step, DeleteStep):
        edits = files.plan_delete(workspace, step.path)
    else:
        return Plan([], 0)
    return Plan(edits, len(edits))


def _touched(workspace: Path, step: Step, planned: Plan | None) -> list[tuple[str, str]]:
    """The paths beyond the step's own arguments that policy must judge: the
    files its plan writes, and where symlinks among them really lead."""
    writes = [e.path for e in planned.edits] if planned else []
    reads = [step.path] if isinstance(step, (ReadStep, ListStep)) else []
    if isinstance(step, (WriteStep, DeleteStep)):
        writes.append(step.path)
    return (
        [("write", w) for w in writes]
        + [("write", r) for r in real_paths(workspace, writes)]
        + [("read", r) for r in real_paths(workspace, reads)]
    )


def execute(
    workspace: Path,
    step: Step,
    s: SessionState,
    call_id: str,
    planned: Plan | None,
    hidden: Any = None,
    pol: policy.Policy = policy.DEFAULT_POLICY,
    *,
    store: Any = None,
    actor: str = "worker",
) -> ToolResult:
    """Carry out a started call. `planned` is None when this task is a redelivery
    that found the call started by a worker that died. Shell commands run in
    the sandbox with the session policy's limits and network setting."""
    if isinstance(step, SearchStep):
        return search.search(workspace, step, hidden=hidden)
    if isinstance(step, NETWORK_STEPS):
        from orchestrator.tools.web import steps as net_run  # httpx, pybreaker: only when used

        return net_run.run_step(step, pol.doc.network, store=store, actor=actor)
    if isinstance(step, ReadStep):
        return files.read_file(workspace, step.path, step.max_output_bytes)
    if isinstance(step, ListStep):
        return files.list_files(workspace, step.path, step.glob, step.max_output_bytes, hidden)
    if isinstance(step, ShellStep):
        if planned is None and not step.idempotent:
            raise Interrupted(
                "the worker died while this command was running, so its effects are unknown; "
                "inspect the target and resubmit, or mark the step `idempotent: true` to let "
                "a redelivered task run it again"
            )
        return shell.run_shell(
            workspace, step, limits=pol.doc.limits, network=pol.doc.network.for_shell, policy=pol
        )
    start = time.monotonic()
    edits = planned.edits if planned is not None else _resume(workspace, step, s, call_id, hidden)
    files.apply_edits(workspace, edits)
    call = s.call(call_id)
    count = planned.count if planned is not None else (call.planned_count if call else 0)
    changed = len([c for c in s.pending if c.call_id == call_id]) if planned is None else len(edits)
    return ToolResult(
        output=f"{changed} file(s) changed, {count} replacement(s)"
        if isinstance(step, ReplaceStep)
        else f"{changed} file(s) changed",
        count=count,
        duration_s=time.monotonic() - start,
        edits=tuple(edits),
    )


def _resume(
    workspace: Path, step: Step, s: SessionState, call_id: str, hidden: Any = None
) -> list[FileEdit]:
    """Edits of an interrupted call still to make. Edits already on disk are
    skipped; the rest are re-planned and must reproduce the recorded after-hash.
    A file matching neither recorded hash was changed by someone else: refuse."""
    recorded = [c for c in s.pending if c.call_id == call_id]
    fresh = {e.path: e for e in plan(workspace, step, hidden).edits} if recorded else {}
    todo = []
    for c in recorded:
        target = workspace / c.path
        current = content_hash(target.read_bytes()) if target.is_file() else None
        if current == c.after_hash:
            continue
        edit = fresh.get(c.path)
        if current != c.before_hash or edit is None or edit.after_hash != c.after_hash:
            raise Interrupted(
                f"{c.path} changed since this call planned its edit (expected "
                f"content {c.before_hash} or {c.after_hash}, found {current}); "
                "inspect the target and resubmit the job"
            )
        todo.append(edit)
    return todo


def _diff(edit: FileEdit) -> str:
    return files.unified_diff(edit)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _written(result: ToolResult) -> int:
    return sum(len(e.after) for e in result.edits if e.after is not None)


def fail_session(
    runner: Runner, ticket: Ticket, error: str, message: str, task_id: str | None = None
) -> None:
    """Record that a session cannot go on (an unexpected error in its task)."""

    def _fail() -> None:
        state = load(runner.store, ticket.session_id)
        if state.session.status == "new":
            runner._start(ticket, state, None)
            state = load(runner.store, ticket.session_id)
        if not state.session.finished:
            runner._append(
                ticket.session_id,
                [p.SessionFailed(error=error, message=message)],
                state.last_seq,
                "session:failed",
                ticket.job_id,
                f"task:{task_id}" if task_id else None,
            )
        runner.report(ticket.job_id, ticket.session_id, "failed", None, ticket.sessions_total)

    runner._retrying(_fail)

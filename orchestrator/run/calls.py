"""One step's tool call as the runner handles it (`Call`), and the events it
makes: the request and decision, the start with its planned edits, and the
outcome. Building them reads no store; the runner appends them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events import payloads as p
from events.projections import Projections, SessionState
from orchestrator.config.secrets import known_values
from orchestrator.errors import ToolError
from orchestrator.guard import decision
from orchestrator.guard.facts import PathFact
from orchestrator.guard.masking import mask
from orchestrator.ops import tracing
from orchestrator.run.steps import Step
from orchestrator.run.ticket import Ticket
from orchestrator.tools import files
from orchestrator.tools.base import Plan, ToolResult, content_size
from orchestrator.tools.interface import Tool
from orchestrator.tools.jail import Jail, PathRefused, path_facts, real_paths


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


@dataclass(frozen=True)
class Call:
    """Step `turn` of a session, run by `tool`: what every phase of the call
    needs besides the session's state, which changes between phases."""

    ticket: Ticket
    turn: int
    step: Step
    tool: Tool
    workspace: Path
    last: bool  # the session's last step: its outcome ends the session
    cause: str | None  # the causation id of what we append (the task)

    @property
    def call_id(self) -> str:
        return f"{self.ticket.session_id}/{self.turn}"

    @property
    def kind(self) -> str:
        return self.step.kind

    def key(self, phase: str) -> str:
        """The idempotency key of this call's append in `phase`."""
        return f"step:{self.turn}:{phase}"


def masked(text: str) -> str:
    """Tool output and error text as it may enter an event: every secret this
    process knows (orchestrator.config.secrets) and every credential shape masked."""
    return mask(text, known_values()) if text else text


def usage_of(state: Projections) -> decision.Usage:
    """What quotas and rate limits are decided on, from the projections."""
    q = state.quota
    return decision.Usage(
        tool_calls=dict(q.tool_calls),
        cpu_s=q.shell_cpu_s,
        wall_s=q.shell_wall_s,
        bytes_written=q.bytes_written,
        files_changed=state.session.files_count,
        recent=q.recent_by_tool(),
    )


def judged_paths(
    call: Call, planned: Plan | None, plan_error: ToolError | None
) -> tuple[list[tuple[str, str]], list[PathFact]]:
    """`touched` and `facts` of the call, read through one jail of its
    workspace (each opened its own: the root resolved and opened twice more),
    or none for a call that names no path (a replace or search that plans no
    edit): nothing there to walk."""
    reads, writes = call.tool.paths(call.step, planned)
    if not reads and not writes and _cwd(call) is None:
        return [], facts(call, planned, plan_error)
    with Jail(call.workspace) as jail:
        return touched(call.tool, jail, call.step, planned), facts(call, planned, plan_error, jail)


def touched(
    tool: Tool, workspace: Path | Jail, step: Step, planned: Plan | None
) -> list[tuple[str, str]]:
    """The paths beyond the step's own arguments that policy must judge: the
    files its plan writes, and where symlinks among them really lead."""
    reads, writes = tool.paths(step, planned)
    return (
        [("write", w) for w in writes]
        + [("write", r) for r in real_paths(workspace, writes)]
        + [("read", r) for r in real_paths(workspace, reads)]
    )


def _cwd(call: Call) -> str | None:
    """The folder a shell step runs in, which policy judges as a path."""
    cwd = getattr(call.step, "cwd", None)
    return cwd if call.kind == "shell" and isinstance(cwd, str) else None


def facts(
    call: Call, planned: Plan | None, plan_error: ToolError | None, jail: Jail | None = None
) -> list[PathFact]:
    """What the file system holds at the call's paths (and a shell step's
    cwd), for the policy to deny escapes, special files and outside hard
    links before the tool runs; a plan the jail refused (a patch naming
    `../x`) is one such fact too."""
    reads, writes = call.tool.paths(call.step, planned)
    pairs = [("read", r) for r in reads] + [("write", w) for w in writes]
    cwd = _cwd(call)
    if cwd is not None:
        pairs.append(("cwd", cwd))
    found = path_facts(jail or call.workspace, pairs) if pairs else []
    if isinstance(plan_error, PathRefused):
        found.append(plan_error.fact("write"))
    return found


def requested(
    call: Call, args: dict[str, Any], verdict: decision.Verdict, pol_hash: str
) -> list[Any]:
    """TurnStarted, ToolCallRequested and the PermissionDecided of the call."""
    return [
        p.TurnStarted(turn=call.turn, name=call.step.label, kind=call.kind),
        p.ToolCallRequested(call_id=call.call_id, turn=call.turn, tool=call.kind, args=args),
        p.PermissionDecided(
            call_id=call.call_id,
            decision=verdict.decision,  # type: ignore[arg-type]
            rule_id=verdict.rule_id,
            policy_hash=pol_hash,
            reason=verdict.reason,
        ),
    ]


def asked(call: Call, verdict: decision.Verdict) -> p.ConfirmationRequested:
    return p.ConfirmationRequested(
        call_id=call.call_id,
        turn=call.turn,
        tool=call.kind,
        rule_id=verdict.rule_id,
        reason=verdict.reason,
    )


def refused(call: Call, s: SessionState, verdict: decision.Verdict) -> list[Any]:
    """A denied call: no ToolCallFailed, since the call never started and so
    costs no quota; the ledger and the session's error say why."""
    events: list[Any] = []
    if verdict.rule_id.startswith("quota:"):
        events.append(
            p.QuotaExceeded(
                call_id=call.call_id, tool=call.kind, rule_id=verdict.rule_id, detail=verdict.reason
            )
        )
    return events + failed(call, s, PolicyRefused.of(verdict), 0.0)[1:]


def answer_refused(answer: Any) -> PolicyRefused:
    """The error of a call whose confirmation an operator denied."""
    return PolicyRefused(
        f"denied by {answer.by}"
        + (f" ({answer.answer})" if answer.answer else "")
        + f" when asked under rule {answer.rule_id}: {answer.reason}. Nothing ran"
    )


def started(call: Call, planned: Plan) -> list[Any]:
    """ToolCallStarted and the FileChanged events of the planned edits."""
    return [
        p.ToolCallStarted(
            call_id=call.call_id,
            planned_count=planned.count,
            trace_id=tracing.current_trace_id(),
        ),
        *(
            p.FileChanged(
                call_id=call.call_id,
                path=e.path,
                before_hash=e.before_hash,
                after_hash=e.after_hash,
                diff=files.unified_diff(e),
            )
            for e in planned.edits
        ),
    ]


def completed(
    call: Call, s: SessionState, planned: Plan | None, result: ToolResult, elapsed: float
) -> list[Any]:
    """ToolCallCompleted, TurnCompleted, and on the last step the session's end."""
    output = masked(result.output)
    events: list[Any] = [
        *call.tool.record(call.call_id, result),
        p.ToolCallCompleted(
            call_id=call.call_id,
            tool=call.kind,
            exit_code=result.exit_code,
            duration_s=round(result.duration_s or elapsed, 6),
            cpu_s=round(result.cpu_s, 6),
            output=output,
            output_bytes=result.output_bytes,
            output_digest=hashlib.sha256(output.encode()).hexdigest(),
            bytes_written=sum(content_size(e.after) for e in result.edits),
            count=result.count,
        ),
        p.TurnCompleted(turn=call.turn, status="ok"),
    ]
    if call.last:
        # What the fold of ToolCallCompleted will make of files_changed.
        mine = {c.path for c in s.pending if c.call_id == call.call_id}
        if planned is not None:
            mine |= {e.path for e in planned.edits}
        mine |= {e.path for e in result.edits}  # recorded with the completion (shell)
        events.append(p.SessionCompleted(files_changed=s.files_count_with(mine)))
    return events


def failed(call: Call, s: SessionState, exc: ToolError, elapsed: float) -> list[Any]:
    """ToolCallFailed, TurnCompleted, and the session's end unless the step
    may fail (then the session ends only after its last step)."""
    result: ToolResult | None = getattr(exc, "result", None)
    step = call.step
    events: list[Any] = [
        *call.tool.record(call.call_id, result),
        p.ToolCallFailed(
            call_id=call.call_id,
            tool=call.kind,
            error=exc.error,
            message=masked(str(exc)),
            duration_s=round(result.duration_s if result else elapsed, 6),
            cpu_s=round(result.cpu_s, 6) if result else 0.0,
            output=masked(result.output) if result else "",
            output_bytes=result.output_bytes if result else 0,
            retryable=exc.transient,
        ),
        p.TurnCompleted(turn=call.turn, status="failed"),
    ]
    if not step.continue_on_error:
        events.append(
            p.SessionFailed(
                error=exc.error,
                message=masked(f"step {call.turn} ({step.label}) failed: {exc}"),
            )
        )
    elif call.last:
        events.append(p.SessionCompleted(files_changed=s.files_count))
    return events

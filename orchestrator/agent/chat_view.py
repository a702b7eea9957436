"""What a person sees in `orchestrator chat`: Rich markup lines for an event
as it lands, the conversation so far, `/status`, `/quota`, `/replay`, and the
answer to a confirmation question. Pure: no I/O, so the REPL in
`orchestrator.agent.chat` only prints what these return."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import Any, Literal

import orjson
from rich.markup import escape

from events import payloads as p
from events.envelope import Event
from events.projections import AgentState, Projections

__all__ = [
    "HELP",
    "args_summary",
    "ledger_args",
    "describe",
    "conversation",
    "status_lines",
    "quota_lines",
    "replay_lines",
    "parse_answer",
]

OUTPUT_LINES = 8  # of a tool's output, shown under the call
LINE_CHARS = 160

HELP = """\
Type a message for the agent. Commands:
  /status   the session: status, model turns, files changed
  /quota    tokens in and out, tool calls by kind, shell time, bytes written
  /pending  confirmations this session waits for
  /replay   the session's events, one line each
  /detach   leave without ending the session (resume with --session ID)
  /exit     end the session (recorded as completed) and leave; Ctrl-D or
            Ctrl-C at the prompt do the same
  /help     this text
Ctrl-C while the agent works cancels its turn (a running command is killed)."""


def _clip(text: str, limit: int = LINE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def args_summary(tool: str, args: dict[str, Any]) -> str:
    """A call's arguments in a few words: the command line, the path, the pattern."""

    def globs() -> str:
        g = args.get("glob") or ()
        return f" in {', '.join(g)}" if g else ""

    if tool == "shell":
        cmd = args.get("command") or ()
        line = shlex.join(cmd) if isinstance(cmd, (list, tuple)) else str(cmd)
        cwd = args.get("cwd", ".")
        text = line + (f" (in {cwd})" if cwd not in (".", "", None) else "")
    elif tool in ("read", "delete"):
        text = str(args.get("path", ""))
    elif tool == "list":
        text = str(args.get("path", ".")) + globs()
    elif tool == "search":
        text = repr(args.get("pattern", "")) + globs()
    elif tool == "replace":
        text = f"{args.get('pattern', '')!r} -> {args.get('replacement', '')!r}" + globs()
    elif tool == "write":
        text = f"{args.get('path', '')} ({args.get('content_bytes', 0)} bytes)"
    elif tool == "patch":
        text = f"({args.get('diff_bytes', 0)} bytes of diff)"
    else:
        text = orjson.dumps(args, option=orjson.OPT_SORT_KEYS).decode()
    return _clip(text, 200)


def _output(text: str, lines: int = OUTPUT_LINES) -> list[str]:
    rows = text.rstrip("\n").splitlines()
    shown = [f"    [dim]│ {escape(_clip(r))}[/]" for r in rows[:lines]]
    if len(rows) > lines:
        shown.append(f"    [dim]│ … {len(rows) - lines} more line(s)[/]")
    return shown


def ledger_args(state: Projections, call_id: str) -> dict[str, Any]:
    for x in reversed(state.ledger.entries):
        if x.call_id == call_id:
            return dict(x.args)
    return {}


def describe(e: Event, state: Projections) -> list[str]:
    """Rich markup lines for one event as it lands; `state` is the session
    before it. Bookkeeping events show nothing."""
    pl = e.payload
    a = state.session.agent
    if isinstance(pl, p.ModelRequested):
        return [f"[dim]… model turn {pl.model_turn}[/]"]
    if isinstance(pl, p.ModelResponded):
        if a is not None and pl.model_turn <= a.cancelled_turn:
            return [f"[dim]late answer to cancelled turn {pl.model_turn} ignored[/]"]
        out = []
        if pl.content:
            out.append(f"[bold cyan]agent>[/] {escape(pl.content.strip())}")
        for c in pl.tool_calls:
            if c.error:
                out.append(f"  [red]✗ {escape(c.name)}[/]: {escape(_clip(c.error, 300))}")
        return out
    if isinstance(pl, p.ToolCallRequested):
        return [f"  [bold]→ {pl.tool}[/] {escape(args_summary(pl.tool, pl.args))}"]
    if isinstance(pl, p.PermissionDecided) and pl.decision == "deny":
        return [f"    [red]denied[/] by rule [bold]{escape(pl.rule_id)}[/]: {escape(pl.reason)}"]
    if isinstance(pl, p.ConfirmationRequested):
        return [
            f"    [yellow]needs confirmation[/] (rule {escape(pl.rule_id)}): {escape(pl.reason)}"
        ]
    if isinstance(pl, p.ConfirmationGranted):
        return [f"    [green]allowed[/] by {escape(pl.by)}"]
    if isinstance(pl, p.ConfirmationDenied):
        return [
            f"    [red]refused[/] by {escape(pl.by)}"
            + (f": {escape(pl.reason)}" if pl.reason else "")
        ]
    if isinstance(pl, p.QuotaExceeded):
        return [f"    [red]quota[/] {escape(pl.rule_id)}: {escape(pl.detail)}"]
    if isinstance(pl, p.RateLimited):
        return [f"    [yellow]rate limited[/] ({pl.rate}); retrying in {pl.retry_after_s:g}s"]
    if isinstance(pl, p.ToolCallCompleted):
        code = f"exit {pl.exit_code}, " if pl.tool == "shell" else ""
        return [f"    [green]ok[/] ({code}{pl.duration_s:.2f}s)", *_output(pl.output)]
    if isinstance(pl, p.ToolCallFailed):
        first = (pl.message.splitlines() or [""])[0]
        return [
            f"    [red]failed[/] ({escape(pl.error)}): {escape(_clip(first, 300))}",
            *_output(pl.output),
        ]
    if isinstance(pl, p.AgentTurnCancelled):
        return [f"[yellow]turn {pl.model_turn} cancelled[/] by {escape(pl.by)}"]
    if isinstance(pl, p.ModelFailed):
        return [
            f"[red]model turn {pl.model_turn} failed ({escape(pl.error)}):[/] {escape(pl.message)}"
        ]
    if isinstance(pl, p.SessionFailed):
        return [f"[bold red]session failed ({escape(pl.error)}):[/] {escape(pl.message)}"]
    return []


def conversation(state: Projections) -> list[str]:
    """The conversation so far, as `--session` prints it on resuming."""
    s = state.session
    a = s.agent or AgentState()
    out: list[str] = []
    for entry in a.entries:
        if entry.role == "user":
            out.append(f"[bold]you>[/] {escape(entry.text or '')}")
        elif entry.role == "cancelled":
            out.append(f"[yellow]turn {entry.model_turn} cancelled[/]")
        else:
            if entry.text:
                out.append(f"[bold cyan]agent>[/] {escape(entry.text.strip())}")
            for c in entry.calls:
                if c.error:
                    out.append(f"  [red]✗ {escape(c.name)}[/]: {escape(_clip(c.error, 300))}")
                    continue
                call_id = f"{s.session_id}/{c.turn}"
                tc = s.call(call_id)
                status = tc.status if tc is not None else "not run"
                out.append(
                    f"  [bold]→ {c.name}[/] "
                    f"{escape(args_summary(c.name, ledger_args(state, call_id)))}"
                    f" [dim]({status})[/]"
                )
    return out


def status_lines(state: Projections) -> list[str]:
    s = state.session
    a = s.agent or AgentState()
    shown = "waiting for a confirmation" if s.waiting and not s.finished else s.status
    calls = sum(1 for e in a.entries for c in e.calls if c.turn)
    out = [
        f"session [bold]{s.session_id}[/] ({shown})  job {s.job_id}",
        f"  workspace {escape(s.target)}  tier {s.tier or 'exec'}",
        f"  model {escape(a.provider)}/{escape(a.model)}: {a.model_turns} model turn(s), "
        f"{calls} tool call(s)",
    ]
    if s.policy is not None:
        out.append(
            f"  policy {escape(str(s.policy.get('name', '?')))} ({s.policy_hash[:12]})"
            + (f", elevated by {escape(s.elevated_by)}" if s.elevated_by else "")
        )
    if s.error:
        out.append(f"  [red]{escape(s.error)}[/]")
    if s.files_changed:
        out.append(f"  files changed ({len(s.files_changed)}):")
        out += [
            f"    {escape(c.path)}"
            + (" (deleted)" if c.after_hash is None else " (new)" if c.before_hash is None else "")
            for c in s.files_changed
        ]
    else:
        out.append("  files changed: none")
    return out


def quota_lines(state: Projections) -> list[str]:
    q = state.quota
    a = state.session.agent or AgentState()
    used = q.tokens_in + q.tokens_out
    budget = f" of a budget of {a.token_budget}" if a.token_budget else ""
    by_kind = ", ".join(f"{tool} {n}" for tool, n in q.tool_calls) or "none"
    return [
        f"tokens: {q.tokens_in} in, {q.tokens_out} out ({used}{budget}), "
        f"{q.tokens_cached} cached; {q.model_calls} model call(s)",
        f"tool calls: {by_kind}" + (f"; {q.tool_failures} failed" if q.tool_failures else ""),
        f"shell: {q.shell_cpu_s:.2f}s cpu, {q.shell_wall_s:.2f}s wall; "
        f"{q.bytes_written} byte(s) written, {q.output_bytes} byte(s) of output",
    ]


def _brief(pl: Any) -> str:
    if isinstance(pl, (p.UserMessage,)):
        return _clip(pl.text or f"(digest {pl.digest[:12]})", 80)
    if isinstance(pl, p.ModelResponded):
        calls = ", ".join(c.name for c in pl.tool_calls)
        return (
            f"turn {pl.model_turn}: "
            + _clip((pl.content or "").strip().replace("\n", " "), 60)
            + (f" -> {calls}" if calls else "")
        )
    if isinstance(pl, p.ToolCallRequested):
        return f"{pl.tool} {args_summary(pl.tool, pl.args)}"
    if isinstance(pl, p.PermissionDecided):
        return f"{pl.decision} by {pl.rule_id}"
    if isinstance(pl, (p.ToolCallCompleted,)):
        return f"{pl.tool} exit {pl.exit_code}"
    if isinstance(pl, p.ToolCallFailed):
        return f"{pl.tool} {pl.error}"
    if isinstance(pl, (p.ConfirmationGranted, p.ConfirmationDenied)):
        return f"by {pl.by}"
    if isinstance(pl, p.ConfirmationRequested):
        return f"{pl.tool} under {pl.rule_id}"
    if isinstance(pl, (p.ModelRequested, p.AgentTurnCancelled, p.ModelFailed)):
        return f"turn {pl.model_turn}"
    if isinstance(pl, (p.SessionFailed,)):
        return pl.error
    if isinstance(pl, p.TurnStarted):
        return f"{pl.turn} {pl.kind}"
    if isinstance(pl, p.AgentStarted):
        return f"{pl.mode}, {pl.provider}/{pl.model}"
    return ""


def replay_lines(events: Iterable[Event]) -> list[str]:
    return [
        f"{e.seq:>4} {e.type:<22} [dim]{escape(e.actor)}[/] {escape(_brief(e.payload))}"
        for e in events
    ]


def parse_answer(text: str) -> tuple[Literal["y", "n", "details"] | None, str]:
    """An answer to `Allow ...? [y/n/details]`, and a reason after it ("n not that file")."""
    word, _, reason = text.strip().partition(" ")
    word = word.lower()
    if word in ("y", "yes"):
        return "y", reason.strip()
    if word in ("n", "no"):
        return "n", reason.strip()
    if word in ("d", "details", "?"):
        return "details", ""
    return None, ""

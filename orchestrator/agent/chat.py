"""`orchestrator chat`: a conversation with the agent in a terminal.

A chat is an ordinary session: a job of one target (JobSubmitted), its
SessionStarted and PolicyAttached, then AgentStarted in `chat` mode. Each
line typed becomes a UserMessage and one `orchestrator.agent_advance` task
for the session; the worker does the model and tool calls exactly as for a
job, and this REPL only appends what a person decides (messages, answers to
confirmations, a cancelled turn, the end) and shows the session's events as
they land. So `audit replay`, `pending`, `approve` and `deny` work on a chat
like on any session, and `--session ID` resumes one from its events alone.

The top half is pure (what to show for an event, a state, a command); the
`Chat` class below does the I/O. It imports nothing from `tasks/`: the CLI
(`orchestrator.cli.chat`) hands it a `Backend` to enqueue and revoke with.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import signal
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import orjson
from rich.console import Console
from rich.markup import escape

from events import payloads as p
from events.envelope import Event
from events.errors import SequenceConflict
from events.projections import AgentState, JobState, Projections, apply, apply_job
from events.store import SqlEventStore
from orchestrator.agent import core as agent
from orchestrator.errors import InfraUnavailable, UserError
from orchestrator.guard.masking import mask
from orchestrator.run import confirmations, jobs
from orchestrator.run.jobspec import AgentSpec, JobSpec
from orchestrator.run.runner import Runner, Ticket
from orchestrator.run.steps import Step

__all__ = [
    "Backend",
    "Chat",
    "start_session",
    "chat_ticket",
    "phase",
    "in_flight_turn",
    "args_summary",
    "describe",
    "conversation",
    "status_lines",
    "quota_lines",
    "replay_lines",
    "parse_answer",
    "terminate_task_process",
    "HELP",
]

CHAT_MAX_TURNS = 1000  # model turns in one chat (AgentSpec's ceiling)
POLL_S = 0.05
WORKER_CHECK_S = 1.0
OUTPUT_LINES = 8  # of a tool's output, shown under the call
LINE_CHARS = 160
CANCEL_REASON = "Ctrl-C in orchestrator chat"
CHAT_INSTRUCTION = (
    "(orchestrator chat: no instruction; the person's messages are the "
    "session's UserMessage events)"
)

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

Phase = Literal["idle", "busy", "waiting", "finished"]


# -- pure: where a session stands ------------------------------------------------------


def phase(state: Projections) -> Phase:
    """idle: the agent answered (or its turn was cancelled) and waits for the
    person; waiting: a confirmation is unanswered; busy: a unit of work is due."""
    s = state.session
    if s.finished:
        return "finished"
    if s.waiting:
        return "waiting"
    if s.agent is None:
        return "busy"
    return "idle" if agent.next_action(state).kind == "idle" else "busy"


def in_flight_turn(state: Projections) -> int:
    """The model turn a Ctrl-C cancels: the one asked for and not answered, or
    the one about to be asked for a message, or the last answered one while
    its tool calls run."""
    a = state.session.agent or AgentState()
    if a.requested > a.model_turns:
        return a.requested
    last = a.entries[-1] if a.entries else None
    if last is not None and last.role == "user":
        return a.model_turns + 1
    return a.model_turns


def in_flight_units(
    events: Iterable[Event], before: Projections, after: Projections
) -> list[Event]:
    """The events that started work still running: ToolCallStarted of calls
    neither completed nor failed (in `after`), and the ModelRequested of a
    model turn that was unanswered (in `before`, the state before the cancel).
    Their actor and causation name the worker process and the task."""
    a = before.session.agent or AgentState()
    started = {c.call_id for c in after.session.calls if c.status == "started"}
    out = []
    for e in events:
        pl = e.payload
        if isinstance(pl, p.ToolCallStarted) and pl.call_id in started:
            out.append(e)
        elif (
            isinstance(pl, p.ModelRequested)
            and a.requested > a.model_turns
            and pl.model_turn == a.requested
        ):
            out.append(e)
    return out


# -- pure: what the person sees ----------------------------------------------------------


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


def _ledger_args(state: Projections, call_id: str) -> dict[str, Any]:
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
                    f"{escape(args_summary(c.name, _ledger_args(state, call_id)))}"
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


# -- starting and resuming ---------------------------------------------------------------


def start_session(
    store: SqlEventStore,
    runner: Runner,
    started: Callable[..., p.AgentStarted],
    workspace: Path,
    spec: AgentSpec,
    *,
    policy_files: Sequence[Any] = (),
    tier: Any = None,
    elevated_by: str | None = None,
    actor: str,
) -> Ticket:
    """Record a new chat: JobSubmitted for a one-target job with this agent,
    then the session's start (SessionStarted, PolicyAttached) and AgentStarted
    in chat mode (`started` is `AgentLoop.started`).

    A job spec's agent must have an instruction, and a chat has none: the
    job records `CHAT_INSTRUCTION` (what the job is, for whoever reads the
    log), and AgentStarted the empty instruction the model really got."""
    job = JobSpec(
        name="chat",
        targets=(glob.escape(str(workspace)),),
        agent=spec.model_copy(update={"instruction": CHAT_INSTRUCTION}),
    )
    job_id, tickets = jobs.prepare(
        job, workspace, policy_files=policy_files, tier=tier, elevated_by=elevated_by
    )
    [ticket] = tickets
    jobs.record(store, job, job_id, tickets, actor)
    sid = ticket.session_id
    runner._start(ticket, runner.load(sid), None)
    state = runner.load(sid)
    if state.session.finished:
        runner.report(job_id, sid, state.session.status, None, 1)
        raise UserError(f"cannot chat in {workspace}: {state.session.error}")
    chat = spec.model_copy(update={"instruction": ""})
    runner._append(
        sid,
        [started(chat, state, ticket.tier, mode="chat")],
        state.last_seq,
        "agent:started",
        job_id,
        None,
    )
    return ticket


def chat_ticket(store: SqlEventStore, session_id: str) -> Ticket:
    """The ticket that continues a chat, from its events: the job's agent
    block rides along, so the worker finds its provider (and script)."""
    ticket, _ = confirmations.continuation(store, session_id)
    if ticket.agent is None:
        job = JobState()
        for e in store.read_stream(ticket.job_id):
            job = apply_job(job, e)
        spec = JobSpec.model_validate(job.spec)
        if spec.agent is not None:
            ticket = ticket.model_copy(update={"agent": spec.agent.model_dump(mode="json")})
    return ticket


# -- the task's process (Ctrl-C on a broker without remote control) -----------------------


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                children.setdefault(st[1], []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def _is_pool_process(pid: int) -> bool:
    """A Celery pool process: a celery worker whose parent is one too (never
    the worker's main process)."""
    st = _stat(pid)
    if st is None:
        return False
    own, parent = _cmdline(pid), _cmdline(st[1])
    return all(b"celery" in c and b"worker" in c for c in (own, parent))


def _in_workspace(pid: int, workspace: str) -> bool:
    """Whether a process works in the workspace: bubblewrap names it in its
    arguments, and every process of a call starts in it."""
    if os.fsencode(workspace) in _cmdline(pid):
        return True
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return cwd == workspace or cwd.startswith(workspace.rstrip("/") + "/")


def terminate_task_process(
    actor: str,
    workspace: str,
    still_running: Callable[[], bool],
    hostname: str | None = None,
    wait_s: float = 5.0,
) -> bool:
    """Kill the worker process a tool call runs in (what `revoke(terminate=True)`
    does), found by the actor of the events it appended (`worker:HOST:PID`),
    and every process it started: the sandbox's bubblewrap dies with its
    parent and takes the command's whole pid namespace with it; in the
    fallback sandbox the command's process group is killed here.

    Only a Celery pool process on this host, running a process in the
    session's workspace, while `still_running()`: a pool process that has
    moved on to other work is left alone."""
    kind, _, rest = actor.partition(":")
    host, _, pid_text = rest.rpartition(":")
    if kind != "worker" or host != (hostname or socket.gethostname()) or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if not _is_pool_process(pid):
        return False
    tree = _descendants(pid)
    if not any(_in_workspace(t, workspace) for t in tree):
        return False
    if not still_running():  # re-checked last: the call may have ended meanwhile
        return False
    for target in (pid, *tree):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)
    for target in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(target, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while any(_alive(t) for t in (pid, *tree)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return True


# -- the REPL ------------------------------------------------------------------------------


@dataclass
class Backend:
    """What the REPL needs from the queue; `orchestrator.cli.chat` builds it
    from `tasks/` (orchestrator never imports tasks)."""

    enqueue: Callable[[Ticket], None]  # one agent_advance
    continue_after: Callable[[Ticket, int, tuple[Step, ...]], None]  # after an answer
    revoke: Callable[[str], None]  # a task id, terminate
    worker_problem: Callable[[], str | None] = lambda: None  # why no worker serves us
    # Kill a task running on this host ourselves: the embedded broker has no
    # remote control, and on others it makes sure before the prompt returns.
    kill_local: bool = True
    on_end: Callable[[Ticket], None] = lambda ticket: None  # e.g. sign the heads


class Hangup(Exception):
    """The terminal went away (SIGHUP) or the process was asked to stop."""


@dataclass
class Chat:
    store: SqlEventStore
    runner: Runner
    backend: Backend
    ticket: Ticket
    actor: str
    console: Console
    secrets: tuple[str, ...] = ()
    store_content: bool = True
    read_line: Callable[[str], str] = input
    state: Projections = field(init=False)
    _interrupted: bool = field(default=False, init=False)
    _checked_worker: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.state = self.runner.load(self.ticket.session_id)

    @property
    def sid(self) -> str:
        return self.ticket.session_id

    def show(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.console.print(line, highlight=False)

    # -- the loop ------------------------------------------------------------------

    def run(self, resumed: bool = False) -> int:
        """Talk until /exit, Ctrl-D, Ctrl-C at the prompt, or the session ends;
        the exit code (0, or 1 when the session failed)."""
        old = {sig: signal.signal(sig, self._hangup) for sig in (signal.SIGHUP, signal.SIGTERM)}
        try:
            return self._run(resumed)
        except Hangup:
            return self.detach()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _hangup(self, signum: int, frame: FrameType | None) -> None:
        raise Hangup()

    def _run(self, resumed: bool) -> int:
        s = self.state.session
        a = s.agent or AgentState()
        self.console.print(
            f"[bold]chat[/] session {self.sid} in {escape(s.target)} ({escape(a.provider)}/"
            f"{escape(a.model)}, tier {s.tier or 'exec'}). /help lists commands; Ctrl-C "
            "cancels a turn, Ctrl-D ends the chat.",
            highlight=False,
        )
        if resumed:
            self.show(conversation(self.state))
        while True:
            now = phase(self.state)
            if now in ("busy", "waiting"):
                now = self.turn()
            if now == "finished":
                return self.ended()
            try:
                line = self.read_line("you> ")
            except (KeyboardInterrupt, EOFError):
                self.console.print()
                return self.finish()
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                code = self.command(line)
                if code is not None:
                    return code
                continue
            self.say(line)

    def command(self, line: str) -> int | None:
        name = line.split()[0].lower()
        if name in ("/exit", "/quit"):
            return self.finish()
        if name == "/detach":
            return self.detach()
        if name == "/help":
            self.console.print(HELP, highlight=False, markup=False)
        elif name == "/status":
            self.show(status_lines(self.fresh()))
        elif name == "/quota":
            self.show(quota_lines(self.fresh()))
        elif name == "/pending":
            mine = [w for w in confirmations.pending(self.store) if w.session_id == self.sid]
            if not mine:
                self.console.print("no confirmations are waiting in this session")
            for w in mine:
                self.console.print(
                    f"{w.call_id}: {w.tool} {escape(args_summary(w.tool, w.args))}"
                    f" (rule {escape(w.rule_id)}: {escape(w.reason)})",
                    highlight=False,
                )
        elif name == "/replay":
            self.show(replay_lines(self.store.read_stream(self.sid)))
        else:
            self.console.print(f"unknown command {escape(name)}; /help lists them", highlight=False)
        return None

    # -- a turn ------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """Append the message (masked) and enqueue the session's next unit."""
        masked = mask(text, self.secrets)
        event = p.UserMessage(text=masked if self.store_content else "", digest=agent.digest(text))
        self._append(lambda state: [event])
        self.backend.enqueue(self.ticket)
        self.poll()

    def turn(self) -> Phase:
        """Show the events as they land until the agent waits for the person
        (or the session ends); answer confirmations inline; Ctrl-C cancels."""
        self._interrupted = False
        old = signal.signal(signal.SIGINT, self._on_interrupt)
        try:
            while True:
                self.poll()
                now = phase(self.state)
                if now in ("idle", "finished"):
                    return now
                if self._interrupted:
                    self._interrupted = False
                    self.cancel()
                    continue
                if now == "waiting":
                    signal.signal(signal.SIGINT, old)  # input() raises KeyboardInterrupt
                    try:
                        self.confirm()
                    except (KeyboardInterrupt, EOFError):  # Ctrl-C or Ctrl-D: no, and stop
                        self.console.print()
                        self.cancel(deny_waiting=True)
                    finally:
                        signal.signal(signal.SIGINT, self._on_interrupt)
                    continue
                self._check_worker()
                time.sleep(POLL_S)
        finally:
            signal.signal(signal.SIGINT, old)

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        self._interrupted = True

    def _check_worker(self) -> None:
        now = time.monotonic()
        if now - self._checked_worker < WORKER_CHECK_S:
            return
        self._checked_worker = now
        problem = self.backend.worker_problem()
        if problem:
            raise InfraUnavailable(
                f"{problem}; the chat is kept: resume it with "
                f"`orchestrator chat --session {self.sid}`"
            )

    def poll(self, quiet: bool = False) -> None:
        for e in list(self.store.read_stream(self.sid, self.state.last_seq)):
            if not quiet:
                self.show(describe(e, self.state))
            self.state = apply(self.state, e)

    def fresh(self) -> Projections:
        self.poll(quiet=True)
        return self.state

    def confirm(self) -> None:
        """Ask about each waiting call: y/n append the answer as `approve` and
        `deny` do and enqueue the continuation; `details` shows the rest."""
        for c in self.state.session.waiting:
            args = _ledger_args(self.state, c.call_id)
            question = f"Allow {c.tool} {args_summary(c.tool, args)}? [y/n/details] "
            while True:
                word, reason = parse_answer(self.read_line(question))
                if word == "details":
                    self.console.print(
                        f"  call {c.call_id}, turn {c.turn}\n  rule [bold]{escape(c.rule_id)}"
                        f"[/]: {escape(c.reason)}\n  arguments:\n"
                        + escape(
                            orjson.dumps(
                                args, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
                            ).decode()
                        ),
                        highlight=False,
                    )
                    continue
                if word is None:
                    self.console.print(
                        "answer y, n or details (a reason may follow: `n not that file`)"
                    )
                    continue
                self.answer(c.call_id, word == "y", reason)
                break

    def answer(self, call_id: str, grant: bool, reason: str) -> bool:
        """Record an answer; True when ours is the one that counts."""
        try:
            w = confirmations.find(self.store, call_id)
        except UserError:
            self.console.print(f"{call_id} was answered elsewhere", highlight=False)
            return False
        ours, _, start, steps = confirmations.answer(
            self.store, w, grant=grant, by=self.actor, reason=reason
        )
        if not ours:
            self.console.print(f"{call_id} was answered by someone else first", highlight=False)
            return False
        # The job's agent block rides on the ticket: the continuation ends
        # with the agent's next unit.
        self.backend.continue_after(self.ticket, start, steps)
        return True

    def cancel(self, deny_waiting: bool = False) -> None:
        """Ctrl-C: AgentTurnCancelled first (so whatever runs next does nothing),
        then stop what still runs: revoke its task, kill a running tool call's
        process on this host (the embedded broker has no remote control), and
        record that call as failed."""
        self.poll()
        before = self.state
        if before.session.finished or before.session.agent is None:
            return
        if deny_waiting:
            for c in before.session.waiting:
                with contextlib.suppress(UserError):
                    confirmations.answer(
                        self.store,
                        confirmations.find(self.store, c.call_id),
                        grant=False,
                        by=self.actor,
                        reason=CANCEL_REASON,
                    )
            self.poll()
            before = self.state
        self._append(
            lambda state: [
                p.AgentTurnCancelled(
                    model_turn=in_flight_turn(state), by=self.actor, reason=CANCEL_REASON
                )
            ]
        )
        self.poll()
        after = self.state
        units = in_flight_units(self.store.read_stream(self.sid), before, after)
        for e in units:
            task = (e.causation_id or "").removeprefix("task:")
            if task:
                self.backend.revoke(task)
        # A model call left running finishes on the worker and its answer is
        # ignored; a tool call is killed, and recorded as stopped.
        calls = [e.payload.call_id for e in units if isinstance(e.payload, p.ToolCallStarted)]
        for e in units:
            if isinstance(e.payload, p.ToolCallStarted) and self.backend.kill_local:
                call_id = e.payload.call_id
                terminate_task_process(
                    e.actor, after.session.target, lambda: self._started(call_id)
                )
        for call_id in calls:
            self._record_killed(call_id)
        self.poll()

    def _started(self, call_id: str) -> bool:
        call = self.runner.load(self.sid).session.call(call_id)
        return call is not None and call.status == "started"

    def _record_killed(self, call_id: str) -> None:
        def events(state: Projections) -> list[Any]:
            call = state.session.call(call_id)
            if call is None or call.status != "started":
                return []  # it ended on its own first
            return [
                p.ToolCallFailed(
                    call_id=call_id,
                    tool=call.tool,
                    error="Cancelled",
                    message=f"stopped by {self.actor} ({CANCEL_REASON}) "
                    "while it ran; what it did before that is not known",
                ),
                p.TurnCompleted(turn=call.turn, status="failed"),
            ]

        self._append(events)

    # -- the end -----------------------------------------------------------------------

    def finish(self) -> int:
        """/exit: the session completes (and with it its one-session job)."""
        state = self.fresh()
        if not state.session.finished:
            stored = self._append(
                lambda st: (
                    []
                    if st.session.finished
                    else [p.SessionCompleted(files_changed=len(st.session.files_changed))]
                ),
                key="session:completed",
            )
            if stored:
                self.runner.report(
                    self.ticket.job_id, self.sid, "completed", None, self.ticket.sessions_total
                )
                self.backend.on_end(self.ticket)
        return self.ended()

    def ended(self) -> int:
        s = self.fresh().session
        colour = "green" if s.status == "completed" else "red"
        self.console.print(
            f"session {self.sid} [{colour}]{s.status}[/], "
            f"{len(s.files_changed)} file(s) changed; see `orchestrator audit "
            f"replay {self.sid}`",
            highlight=False,
        )
        return 0 if s.status == "completed" else 1

    def detach(self) -> int:
        with contextlib.suppress(OSError):
            self.console.print(
                f"left session {self.sid} open; resume it with `orchestrator "
                f"chat --session {self.sid}`",
                highlight=False,
            )
        return 0

    def _append(
        self, build: Callable[[Projections], list[Any]], key: str | None = None
    ) -> list[Event]:
        """Append what `build` makes of the current state, deciding again when
        the worker appended first (optimistic concurrency, as workers do)."""
        for _ in range(50):
            state = self.runner.load(self.sid)
            events = build(state)
            if not events:
                return []
            try:
                return self.runner._append(
                    self.sid, events, state.last_seq, key, self.ticket.job_id, None
                )
            except SequenceConflict:
                time.sleep(0.01)
        raise InfraUnavailable(
            f"session {self.sid} kept changing while recording (50 tries); try again"
        )

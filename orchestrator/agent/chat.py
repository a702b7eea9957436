"""`orchestrator chat`: a conversation with the agent in a terminal.

A chat is an ordinary session: a job of one target (JobSubmitted), its
SessionStarted and PolicyAttached, then AgentStarted in `chat` mode. Each
line typed becomes a UserMessage and one `orchestrator.agent_advance` task
for the session; the worker does the model and tool calls exactly as for a
job, and this REPL only appends what a person decides (messages, answers to
confirmations, a cancelled turn, the end) and shows the session's events as
they land. So `audit replay`, `pending`, `approve` and `deny` work on a chat
like on any session, and `--session ID` resumes one from its events alone.

Where a session stands is pure and here; what to show for an event, a
state or a command is in `chat_view`, and killing a task's process on this
host in `task_process`. The `Chat` class below does the I/O. It imports
nothing from `tasks/`: the CLI (`orchestrator.cli.chat`) hands it a
`Backend` to enqueue and revoke with.
"""

from __future__ import annotations

import contextlib
import glob
import signal
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
from events.history import history
from events.projections import AgentState, JobState, Projections, apply, apply_job
from events.store import EventStore
from orchestrator.agent import core as agent
from orchestrator.agent.chat_view import (
    HELP,
    args_summary,
    conversation,
    describe,
    ledger_args,
    parse_answer,
    quota_lines,
    replay_lines,
    status_lines,
)
from orchestrator.agent.task_process import terminate_task_process
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
    "in_flight_units",
]

CHAT_MAX_TURNS = 1000  # model turns in one chat (AgentSpec's ceiling)
POLL_S = 0.05
WORKER_CHECK_S = 1.0
CANCEL_REASON = "Ctrl-C in orchestrator chat"
CHAT_INSTRUCTION = (
    "(orchestrator chat: no instruction; the person's messages are the "
    "session's UserMessage events)"
)

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


# -- starting and resuming ---------------------------------------------------------------


def start_session(
    store: EventStore,
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


def chat_ticket(store: EventStore, session_id: str) -> Ticket:
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
    store: EventStore
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
        # Ctrl-C at the prompt ends the chat even when the chat was started
        # with SIGINT ignored (a shell's `&` without job control, some CI
        # runners): Python keeps an inherited SIG_IGN, and turn() would
        # restore it after each turn.
        old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
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
            self.show(conversation(history(self.store, self.sid)))
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
            self.fresh()
            self.show(status_lines(history(self.store, self.sid)))
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
            args = ledger_args(self.state, c.call_id)
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
                    else [p.SessionCompleted(files_changed=st.session.files_count)]
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
            f"{s.files_count} file(s) changed; see `orchestrator audit "
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

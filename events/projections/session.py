"""SessionState: status, turns, tool calls, confirmations, files changed and
the patch so far, folded by `SessionFold` (its agent part is in `agent`)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

from pydantic import Field

from events.envelope import construct_trusted
from events.projections.agent import AgentState
from events.projections.frozen import Fields, Frozen, Handler, Items
from events.projections.window import KEEP, Window, merged, new_digests


class Turn(Frozen):
    turn: int
    name: str
    kind: str
    status: Literal["running", "ok", "failed", "skipped"] = "running"


class Attempt(Frozen):
    """One delivery's run of a call: who ran it and how it ended (an
    attempt a redelivery took over from is `interrupted`)."""

    attempt: int
    worker: str
    outcome: Literal["running", "interrupted", "completed", "failed"] = "running"


class ToolCall(Frozen):
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
    attempts: tuple[Attempt, ...] = ()  # one per delivery that ran it, from its start


class FileChange(Frozen):
    path: str
    before_hash: str | None
    after_hash: str | None


class PendingChange(FileChange):
    call_id: str
    diff: str


class Confirmation(Frozen):
    call_id: str
    turn: int
    tool: str
    rule_id: str
    reason: str
    status: Literal["pending", "granted", "denied"] = "pending"
    by: str | None = None
    answer: str = ""  # the approver's reason


class SessionState(Frozen):
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
    # A live state (events.projections.window): lists cut to what is in play,
    # no files_changed, changed_paths or patch, and this instead. A full
    # state's dump has no such key: its JSON is as before the window.
    window: Window | None = Field(default=None, exclude_if=lambda w: w is None)

    @property
    def files_count(self) -> int:
        """How many distinct paths the session changed (what policy limits
        and SessionCompleted count), in a live state too."""
        return len(self.changed_paths) if self.window is None else self.window.files

    def files_count_with(self, paths: Collection[str]) -> int:
        """`files_count` once `paths` are changed too."""
        if self.window is None:
            return len(self.changed_paths | set(paths))
        return self.window.files + len(new_digests(self.window.paths, paths))

    @property
    def steps_count(self) -> int:
        """len(steps), in a live state too (which keeps no step names)."""
        return len(self.steps) if self.window is None else self.window.steps

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


_DECIDED = {"allow": "allowed", "deny": "denied", "ask": "asked"}


class _Attempts(dict[tuple[int, str, str], Attempt]):
    """Attempts by (number, worker, outcome), each made once per fold: a
    frozen model can be shared, and nearly every call of a session has the
    same few (attempt 1 by one of a few workers, running, then completed), so
    a fold of many calls makes a handful instead of two per call."""

    __slots__ = ()

    def __missing__(self, key: tuple[int, str, str]) -> Attempt:
        number, worker, outcome = key
        a: Attempt = construct_trusted(
            Attempt, {"attempt": number, "worker": worker, "outcome": outcome}
        )
        self[key] = a
        return a

    def ended(self, attempts: tuple[Attempt, ...], outcome: str) -> tuple[Attempt, ...]:
        """`attempts` with the last one, if still running, ended as `outcome`."""
        if not attempts or attempts[-1].outcome != "running":
            return attempts
        last = attempts[-1]
        return (*attempts[:-1], self[last.attempt, last.worker, outcome])


def _change(path: str, before: str | None, after: str | None) -> FileChange:
    change: FileChange = construct_trusted(
        FileChange, {"path": path, "before_hash": before, "after_hash": after}
    )
    return change


class SessionFold:
    """A SessionState in progress: handlers update working copies in place,
    `result` freezes them. Events update the newest turn or call of a number
    or id, so indexes map each to its last occurrence."""

    __slots__ = (
        "_start",
        "_scalars",
        "_turns",
        "_calls",
        "_confirmations",
        "_files",
        "_file_at",
        "_changed",
        "_pending",
        "_patch",
        "_new",
        "_steps",
        "_attempts",
    )

    def __init__(self, start: SessionState) -> None:
        self._start = start
        # A live fold's: digests of paths changed since start, and the step count.
        self._new: set[str] = set()
        self._steps = start.window.steps if start.window is not None else 0
        self._scalars: dict[str, Any] = {}
        self._turns = Items(Turn, start.turns, "turn")
        self._calls = Items(ToolCall, start.calls, "call_id")
        self._confirmations = Items(Confirmation, start.confirmations, "call_id")
        self._files = list(start.files_changed)
        self._file_at: dict[str, list[int]] | None = None  # path -> where in _files
        self._changed = set(start.changed_paths)
        self._pending = list(start.pending)
        self._patch = [start.patch]
        self._attempts = _Attempts()

    def started(self, pl: Fields, e: Fields) -> None:
        live = self._start.window is not None
        self._steps = len(pl["steps"])
        self._scalars.update(
            session_id=e["stream_id"],
            job_id=pl["job_id"],
            target=pl["target"],
            steps=() if live else tuple(pl["steps"]),
            status="running",
        )

    def policy_attached(self, pl: Fields, e: Fields) -> None:
        self._scalars.update(
            policy=pl["document"],
            policy_hash=pl["hash"],
            tier=pl["tier"],
            elevated_by=pl["elevated_by"],
        )

    def completed(self, pl: Fields, e: Fields) -> None:
        self._scalars["status"] = "completed"

    def failed(self, pl: Fields, e: Fields) -> None:
        self._scalars.update(status="failed", error=f"{pl['error']}: {pl['message']}")

    # -- confirmations ---------------------------------------------------------

    def confirmation_requested(self, pl: Fields, e: Fields) -> None:
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

    def _answer(self, status: str, pl: Fields) -> None:
        """The newest pending confirmation of the call gets the answer; a second
        answer (a redelivered command) finds none pending and changes nothing."""
        call_id = pl["call_id"]
        c = self._confirmations.last(lambda c: c["call_id"] == call_id and c["status"] == "pending")
        if c is not None:
            c.update(status=status, by=pl["by"], answer=pl["reason"])

    def granted(self, pl: Fields, e: Fields) -> None:
        self._answer("granted", pl)

    def denied(self, pl: Fields, e: Fields) -> None:
        self._answer("denied", pl)

    # -- turns and calls -------------------------------------------------------

    def turn_started(self, pl: Fields, e: Fields) -> None:
        self._turns.append(
            {"turn": pl["turn"], "name": pl["name"], "kind": pl["kind"], "status": "running"}
        )

    def turn_completed(self, pl: Fields, e: Fields) -> None:
        turn = self._turns.newest(pl["turn"])
        if turn is not None:
            turn["status"] = pl["status"]

    def requested(self, pl: Fields, e: Fields) -> None:
        self._calls.append(
            {
                "call_id": pl["call_id"],
                "turn": pl["turn"],
                "tool": pl["tool"],
                "status": "requested",
                "exit_code": None,
                "error": None,
                "message": "",
                "output": "",
                "planned_count": 0,
                "attempts": (),
            }
        )

    def decided(self, pl: Fields, e: Fields) -> None:
        call = self._calls.newest(pl["call_id"])
        if call is not None:
            call["status"] = _DECIDED[pl["decision"]]

    def call_started(self, pl: Fields, e: Fields) -> None:
        call = self._calls.newest(pl["call_id"])
        if call is not None:
            call.update(
                status="started",
                planned_count=pl["planned_count"],
                attempts=(self._attempts[1, e["actor"], "running"],),
            )

    def redelivered(self, pl: Fields, e: Fields) -> None:
        """Another delivery runs the call again: the attempt before it ends
        as interrupted."""
        call = self._calls.newest(pl["call_id"])
        if call is not None:
            made = self._attempts
            call["attempts"] = (
                *made.ended(call["attempts"], "interrupted"),
                made[pl["attempt"], e["actor"], "running"],
            )

    def call_completed(self, pl: Fields, e: Fields) -> None:
        call = self._calls.newest(pl["call_id"])
        if call is not None:
            call.update(
                status="completed",
                exit_code=pl["exit_code"],
                output=pl["output"],
                attempts=self._attempts.ended(call["attempts"], "completed"),
            )
        if self._pending:
            self._confirm(pl["call_id"])

    def call_failed(self, pl: Fields, e: Fields) -> None:
        """A failed call's planned changes are void: dropped, never in the patch."""
        call_id = pl["call_id"]
        call = self._calls.newest(call_id)
        if call is not None:
            call.update(
                status="failed",
                error=pl["error"],
                message=pl["message"],
                output=pl["output"],
                attempts=self._attempts.ended(call["attempts"], "failed"),
            )
        if self._pending:
            self._pending = [c for c in self._pending if c.call_id != call_id]

    # -- files -----------------------------------------------------------------

    def file_changed(self, pl: Fields, e: Fields) -> None:
        self._pending.append(
            construct_trusted(
                PendingChange,
                {
                    "path": pl["path"],
                    "before_hash": pl["before_hash"],
                    "after_hash": pl["after_hash"],
                    "call_id": pl["call_id"],
                    "diff": pl["diff"],
                },
            )
        )

    def _confirm(self, call_id: str) -> None:
        """Move a completed call's pending changes into the session's changes and
        patch. A path changed before this call keeps its first `before` and takes
        this call's `after`."""
        mine = [c for c in self._pending if c.call_id == call_id]
        if not mine:
            return
        self._pending = [c for c in self._pending if c.call_id != call_id]
        window = self._start.window
        if window is not None:  # live: only the digests of the paths
            new = new_digests(window.paths, (c.path for c in mine))
            self._new |= new
            return
        # In place, with an index of where each path's changes are: a copy of
        # the files and paths per call was quadratic in a long session.
        before, files, at = self._changed, self._files, self._file_at
        if at is None:
            at = self._file_at = {}
            for i, f in enumerate(files):
                at.setdefault(f.path, []).append(i)
        for c in mine:
            if c.path in before:
                for i in at.get(c.path, ()):
                    files[i] = _change(c.path, files[i].before_hash, c.after_hash)
            else:  # a path changed twice by one call is listed twice
                at.setdefault(c.path, []).append(len(files))
                files.append(_change(c.path, c.before_hash, c.after_hash))
        before.update(c.path for c in mine)
        self._patch.extend(c.diff for c in mine)

    # -- the frozen result -----------------------------------------------------

    def result(self, last_seq: int, agent: AgentState | None) -> SessionState:
        if self._start.window is not None:
            return self._live(last_seq, agent)
        values: dict[str, Any] = {
            **self._start.__dict__,
            **self._scalars,
            "turns": self._turns.freeze(),
            "calls": self._calls.freeze(),
            "files_changed": tuple(self._files),
            "changed_paths": frozenset(self._changed),
            "pending": tuple(self._pending),
            "patch": "".join(self._patch),
            "confirmations": self._confirmations.freeze(),
            "last_seq": last_seq,
            "agent": agent,
        }
        state: SessionState = construct_trusted(SessionState, values)
        return state

    def _live(self, last_seq: int, agent: AgentState | None) -> SessionState:
        """A live state's result: the last KEEP of each list, and what is still
        in play before them (events.projections.window). The turns the kept
        conversation names stay with their calls and confirmations: the agent
        decides from them."""
        named = {c.turn for e in agent.entries for c in e.calls} if agent is not None else set()
        confirmations = self._confirmations.freeze(
            KEEP, lambda c: c.status == "pending" or c.turn in named
        )
        asked = {c.call_id for c in confirmations if c.status == "pending"}
        calls = self._calls.freeze(
            KEEP,
            lambda c: (
                c.status in _UNFINISHED
                or (c.status == "asked" and c.call_id in asked)
                or c.turn in named
            ),
        )
        turns = self._turns.freeze(KEEP, lambda t: t.status == "running" or t.turn in named)
        w = self._start.window
        assert w is not None
        if self._new or self._steps != w.steps:
            w = construct_trusted(
                Window, {"paths": merged(w.paths, self._new), "steps": self._steps}
            )
        values: dict[str, Any] = {
            **self._start.__dict__,
            **self._scalars,
            "turns": turns,
            "calls": calls,
            "pending": tuple(self._pending),
            "confirmations": confirmations,
            "last_seq": last_seq,
            "agent": agent,
            "window": w,
        }
        state: SessionState = construct_trusted(SessionState, values)
        return state


_UNFINISHED = ("requested", "allowed", "started")


ON: dict[str, Handler] = {
    "SessionStarted": SessionFold.started,
    "PolicyAttached": SessionFold.policy_attached,
    "ConfirmationRequested": SessionFold.confirmation_requested,
    "ConfirmationGranted": SessionFold.granted,
    "ConfirmationDenied": SessionFold.denied,
    "TurnStarted": SessionFold.turn_started,
    "TurnCompleted": SessionFold.turn_completed,
    "ToolCallRequested": SessionFold.requested,
    "PermissionDecided": SessionFold.decided,
    "ToolCallStarted": SessionFold.call_started,
    "ToolCallRedelivered": SessionFold.redelivered,
    "FileChanged": SessionFold.file_changed,
    "ToolCallCompleted": SessionFold.call_completed,
    "ToolCallFailed": SessionFold.call_failed,
    "SessionCompleted": SessionFold.completed,
    "SessionFailed": SessionFold.failed,
}

"""AgentState, the agent part of a session: the conversation and the model
turns, folded by `AgentFold` (one event per model call, few per session)."""

from __future__ import annotations

from typing import Any, Literal

from events.envelope import construct_trusted
from events.projections.frozen import Fields, Frozen, Handler, fields
from events.projections.window import AGENT_KEEP


class AgentCall(Frozen):
    """A tool call the model asked for; it runs as session turn `turn` (0:
    it could not run, and `error` is what the model is told)."""

    id: str
    name: str
    arguments: str
    turn: int = 0
    error: str | None = None


class AgentEntry(Frozen):
    """One message of the conversation, as the events hold it."""

    role: Literal["user", "assistant", "cancelled"]
    text: str | None = None
    calls: tuple[AgentCall, ...] = ()
    model_turn: int = 0


class AgentState(Frozen):
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


def _entry(
    role: str, text: str | None = None, calls: tuple[AgentCall, ...] = (), model_turn: int = 0
) -> AgentEntry:
    values = {"role": role, "text": text, "calls": calls, "model_turn": model_turn}
    entry: AgentEntry = construct_trusted(AgentEntry, values)
    return entry


def _call(value: Any) -> AgentCall:
    f = fields(value)
    values = {
        "id": f["id"],
        "name": f["name"],
        "arguments": f["arguments"],
        "turn": f.get("turn", 0),
        "error": f.get("error"),
    }
    call: AgentCall = construct_trusted(AgentCall, values)
    return call


class AgentFold:
    """An AgentState in progress. Until AgentStarted there is no agent, and
    agent events are ignored; AgentStarted starts a new one. A live fold
    keeps the conversation's last AGENT_KEEP entries."""

    __slots__ = ("_start", "_values", "_live")

    def __init__(self, start: AgentState | None, live: bool = False) -> None:
        self._start = start  # the result, as long as no event changes it
        self._values: dict[str, Any] | None = None  # its fields, entries as a list
        self._live = live

    def _agent(self) -> dict[str, Any] | None:
        if self._values is None and self._start is not None:
            self._values = {**self._start.__dict__, "entries": list(self._start.entries)}
        return self._values

    def started(self, pl: Fields, e: Fields) -> None:
        instruction = pl["instruction"]
        self._values = {
            "mode": pl["mode"],
            "instruction": instruction,
            "provider": pl["provider"],
            "model": pl["model"],
            "max_turns": pl["max_turns"],
            "max_invalid_calls": pl["max_invalid_calls"],
            "token_budget": pl["token_budget"],
            "prompt_version": pl["prompt_version"],
            "tools": tuple(pl["tools"]),
            "entries": [_entry("user", instruction)] if instruction else [],
            "model_turns": 0,
            "requested": 0,
            "invalid_calls": 0,
            "failure": None,
            "cancelled_turn": 0,
        }

    def user_message(self, pl: Fields, e: Fields) -> None:
        a = self._agent()
        if a is not None:
            a["entries"].append(_entry("user", pl["text"]))

    def requested(self, pl: Fields, e: Fields) -> None:
        a = self._agent()
        if a is not None:
            a.update(requested=pl["model_turn"], failure=None)

    def responded(self, pl: Fields, e: Fields) -> None:
        a = self._agent()
        n = pl["model_turn"]
        if a is None or n <= a["cancelled_turn"]:
            return  # the answer to a cancelled turn arrived late: recorded, not acted on
        calls = tuple(_call(c) for c in pl["tool_calls"])
        a["entries"].append(_entry("assistant", pl["content"], calls, n))
        a["model_turns"] = max(a["model_turns"], n)
        a["invalid_calls"] += sum(1 for c in calls if c.error)

    def failed(self, pl: Fields, e: Fields) -> None:
        a = self._agent()
        if a is not None:
            a["failure"] = f"{pl['error']}: {pl['message']}"

    def cancelled(self, pl: Fields, e: Fields) -> None:
        """The cancelled turn's number is used up: the next model turn gets a
        new one (and new idempotency keys)."""
        a = self._agent()
        if a is None:
            return
        n = pl["model_turn"]
        done = max(a["model_turns"], n)
        a["entries"].append(_entry("cancelled", model_turn=n))
        a.update(requested=done, model_turns=done, cancelled_turn=max(a["cancelled_turn"], n))

    def result(self) -> AgentState | None:
        a = self._values
        if a is None:
            return self._start
        if self._live:
            del a["entries"][:-AGENT_KEEP]
        state: AgentState = construct_trusted(AgentState, {**a, "entries": tuple(a["entries"])})
        return state


ON: dict[str, Handler] = {
    "AgentStarted": AgentFold.started,
    "UserMessage": AgentFold.user_message,
    "ModelRequested": AgentFold.requested,
    "ModelResponded": AgentFold.responded,
    "ModelFailed": AgentFold.failed,
    "AgentTurnCancelled": AgentFold.cancelled,
}

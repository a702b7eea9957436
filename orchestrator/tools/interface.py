"""The tool interface: what the runner asks of every step kind.

A tool is one object per step kind (`kind` is the step's `kind`), found by
the runner in a `Registry` (orchestrator.tools.registry). The runner calls,
in order:

    request(step)                  the arguments recorded and decided on
    plan(workspace, step, hidden)  the file edits it will make (reads only)
    paths(step, planned)           paths beyond the arguments that the policy judges
    effect_free(step, planned)     whether running it can leave nothing half done
    run(call, step, planned)       do it (planned is None on a redelivery)
    record(call_id, result)        events that precede its ToolCallCompleted/Failed
    commit(call, result)           after that append: apply what was recorded (shell);
                                   result None: a redelivery found the completion
                                   stored, so finish a commit a dead worker left undone
    discard(call, result)          instead, when another delivery stored the end first

`BaseTool` gives the answers of a read-only tool; a tool overrides what it
does differently. The implementations stay in the tool modules
(`tools/files.py`, `search.py`, `replace.py`, `shell.py`, `web/*`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from events.projections import SessionState
from orchestrator.guard.policy import Policy
from orchestrator.ops.observer import NO_OBSERVER, Observer
from orchestrator.tools.base import Plan, ToolResult

Hidden = Callable[[str], bool]


@dataclass(frozen=True)
class ToolCall:
    """A started call as its tool sees it: where, which call, under what."""

    workspace: Path
    call_id: str
    session: SessionState  # as recorded when the call started (its pending edits)
    policy: Policy  # the session's: limits, network rules
    hidden: Hidden | None = None  # files the policy denies, which a glob never picks
    store: Any = None  # where web tools record circuit transitions
    actor: str = "worker"
    observer: Observer = NO_OBSERVER
    settings: Any = None  # the settings values the network tools need (None: the process's)
    toolchains: tuple[str, ...] = ()  # read-only directories the shell puts first on PATH
    # Asked while a long call runs (the shell, every second): why it must stop
    # now (its job was cancelled), or None. Never raises.
    cancelled: Callable[[], str | None] | None = None


class Tool(Protocol):
    kind: str

    def request(self, step: Any) -> dict[str, Any]: ...
    def plan(self, workspace: Path, step: Any, hidden: Hidden | None) -> Plan: ...
    def paths(self, step: Any, planned: Plan | None) -> tuple[list[str], list[str]]: ...
    def effect_free(self, step: Any, planned: Plan) -> bool: ...
    def run(self, call: ToolCall, step: Any, planned: Plan | None) -> ToolResult: ...
    def record(self, call_id: str, result: Any) -> list[Any]: ...
    def commit(self, call: ToolCall, result: Any) -> None: ...
    def discard(self, call: ToolCall, result: Any) -> None: ...


def summarize(step: Any) -> dict[str, Any]:
    """The request's arguments as recorded: bulky bodies replaced by digest and size."""
    args: dict[str, Any] = step.model_dump(mode="json", exclude_none=True)
    for bulky in ("content", "diff"):
        if bulky in args:
            data = args.pop(bulky).encode()
            args[f"{bulky}_sha256"] = hashlib.sha256(data).hexdigest()
            args[f"{bulky}_bytes"] = len(data)
    return args


class BaseTool:
    """A read-only tool: no plan, no paths beyond its arguments, nothing to
    protect, no events of its own. Subclasses set `kind` and `run`."""

    kind: str = ""

    def request(self, step: Any) -> dict[str, Any]:
        return summarize(step)

    def plan(self, workspace: Path, step: Any, hidden: Hidden | None) -> Plan:
        return Plan([], 0)

    def paths(self, step: Any, planned: Plan | None) -> tuple[list[str], list[str]]:
        """(reads, writes) the policy judges besides the arguments, with where
        symlinks among them lead."""
        return [], [e.path for e in planned.edits] if planned else []

    def effect_free(self, step: Any, planned: Plan) -> bool:
        return True

    def run(self, call: ToolCall, step: Any, planned: Plan | None) -> ToolResult:
        raise NotImplementedError(f"tool {self.kind!r} does not say how it runs")

    def record(self, call_id: str, result: Any) -> list[Any]:
        return []

    def commit(self, call: ToolCall, result: Any) -> None:
        """After the call's completion is stored: effects held back until
        they were recorded (the shell's changeset). Nothing for most tools."""

    def discard(self, call: ToolCall, result: Any) -> None:
        """Another delivery recorded the call's end: drop what this one held
        back. Nothing for most tools."""

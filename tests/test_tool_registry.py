"""The runner picks each step's tool from a registry by the step's kind, and
reports what ran to the observer it was given (real store, real runner)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest

from events.envelope import new_id
from events.store import open_store
from orchestrator.config.settings import Settings
from orchestrator.errors import ToolInputError
from orchestrator.guard.egress import EgressDenied
from orchestrator.guard.policy import Network as NetRules
from orchestrator.run.runner import Runner, Ticket
from orchestrator.run.steps import FetchStep, ReadStep, Step
from orchestrator.tools.base import Plan, ToolResult
from orchestrator.tools.interface import BaseTool, ToolCall
from orchestrator.tools.registry import TOOLS, Registry
from orchestrator.tools.web.steps import Network


def test_every_step_kind_has_exactly_one_tool() -> None:
    kinds = {m.model_fields["kind"].default for m in get_args(get_args(Step)[0])}
    assert set(TOOLS.kinds) == kinds
    with pytest.raises(ValueError, match="two tools"):
        Registry([TOOLS["read"], TOOLS["read"]])


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ToolInputError, match="known kinds: read, list"):
        TOOLS["teleport"]


class Recorder:
    """An Observer that keeps what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, args))


class Shout(BaseTool):
    """A read that upper-cases the file: a tool added without touching the runner."""

    kind = "read"

    def run(self, call: ToolCall, step: ReadStep, planned: Plan | None) -> ToolResult:
        text = (call.workspace / step.path).read_text().upper()
        return ToolResult(output=text, output_bytes=len(text))


def test_a_registered_tool_runs_its_kind_and_the_observer_hears_of_it(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    (work / "a.txt").write_text("quiet")
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    step = ReadStep(path="a.txt")
    sid = new_id()
    ticket = Ticket(
        job_id=new_id(), session_id=sid, target="repo", path=str(work), steps=(step.label,)
    )
    seen = Recorder()
    runner = Runner(store, "worker:test", observer=seen, tools=TOOLS.with_tools(Shout()))
    assert runner.run_step(ticket, 0, step, last=True) == "completed"
    [done] = [e.payload for e in store.read_stream(sid) if e.type == "ToolCallCompleted"]
    assert (done.tool, done.output) == ("read", "QUIET")
    assert [name for name, _ in seen.calls] == ["permission", "tool_call"]
    assert seen.calls[1][1][:2] == ("read", "ok")


def test_a_circuit_that_opens_is_reported_and_recorded_once(tmp_path: Path) -> None:
    """The network tools report breaker transitions to their observer and
    record them on `circuit:<host>`; no metrics module is involved."""
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    seen = Recorder()
    net = Network(Settings(state_dir=tmp_path / "state", broker_url=""), seen)
    with pytest.raises(EgressDenied):  # sets where transitions go, sends nothing
        net.run_step(FetchStep(url="http://127.0.0.1:9/"), NetRules(), store=store, actor="w")
    net._changed("example.org", "closed", "open", 5, None)
    [changed] = [e.payload for e in store.read_stream("circuit:example.org")]
    assert (changed.previous, changed.state, changed.failures) == ("closed", "open", 5)
    assert seen.calls == [("circuit_changed", ("example.org", "open"))]

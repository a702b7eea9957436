"""What the model sees, pinned: the rendered conversation for representative
sessions, the tool definitions of each tier, and the template's version.

Each state is a real event sequence folded by `events.projections`, as a
worker rebuilds it before a model turn, so a change to the template, to the
tools' pydantic models, to how results are worded or to a policy reason the
model reads back shows up as a snapshot diff in review. The ids and the
workspace are fixed here, so the snapshots hold on any machine.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from events import payloads as p
from events.projections import Projections, fold
from orchestrator.agent import core as agent
from orchestrator.agent.providers.base import ModelReply, ModelToolCall, TokenUsage
from orchestrator.guard.decision import decide
from orchestrator.guard.policy import DEFAULT_POLICY
from orchestrator.run.runner import summarize
from tests.factories import place

SID = "session-1"
WORKSPACE = "/workspace/billing"
INSTRUCTION = (
    "Rename the function fetch_user to load_user everywhere in this repository, "
    "including its callers and tests, then run the test suite and report."
)
TIERS = ("read-only", "read-write", "exec")


# -- the events a worker would have appended --------------------------------------


def started(
    tier: str = "exec",
    mode: str = "job",
    instruction: str = INSTRUCTION,
) -> list[object]:
    return [
        p.SessionStarted(job_id="job-1", target=WORKSPACE, steps=()),
        p.PolicyAttached(
            name=DEFAULT_POLICY.name,
            hash=DEFAULT_POLICY.hash,
            document=DEFAULT_POLICY.doc.model_dump(mode="json"),
            tier=tier,
        ),
        p.AgentStarted(
            instruction=instruction,
            instruction_digest=agent.digest(INSTRUCTION),
            mode=mode,
            provider="scripted",
            model="scripted",
            max_turns=8,  # type: ignore[arg-type]
            max_invalid_calls=5,
            prompt_version=agent.prompt_version(),
            tools=agent.tools_for_tier(tier),
        ),
    ]


def replied(
    n: int,
    content: str | None,
    *calls: tuple[str, Any],
    tier: str = "exec",
    base_turn: int = 0,
    store_content: bool = True,
) -> list[object]:
    """One model turn, its tool calls checked by the agent's own `tool_calls_of`
    (arguments given as data are the JSON a model writes; a str is sent as is)."""
    wire = tuple(
        ModelToolCall(
            id=f"call_{n}_{i}",
            name=name,
            arguments=args if isinstance(args, str) else orjson.dumps(args).decode(),
        )
        for i, (name, args) in enumerate(calls, start=1)
    )
    reply = ModelReply(
        model="scripted",
        content=content,
        tool_calls=wire,
        finish_reason="tool_calls" if wire else "stop",
        usage=TokenUsage(input_tokens=100, output_tokens=20),
    )
    checked, _ = agent.tool_calls_of(reply, agent.tools_for_tier(tier), base_turn)
    return [
        p.ModelRequested(
            model_turn=n, provider="scripted", model="scripted", messages=2, prompt_digest="0" * 64
        ),
        p.ModelResponded(
            model_turn=n,
            model="scripted",
            latency_s=0.01,
            finish_reason=reply.finish_reason,
            input_tokens=100,
            output_tokens=20,
            content=content if store_content else None,
            content_digest=agent.digest(content or ""),
            tool_calls=tuple(p.ModelToolCall(**c) for c in checked),
        ),
    ]


def ran(
    turn: int, name: str, arguments: dict[str, Any], output: str, tier: str = "exec"
) -> list[object]:
    """A tool call the policy allowed and that completed."""
    step = agent.step_of(name, orjson.dumps(arguments).decode(), agent.tools_for_tier(tier))
    assert not isinstance(step, str), step
    call_id = f"{SID}/{turn}"
    return [
        p.TurnStarted(turn=turn, name=step.label, kind=step.kind),
        p.ToolCallRequested(call_id=call_id, turn=turn, tool=step.kind, args=summarize(step)),
        p.PermissionDecided(
            call_id=call_id,
            decision="allow",
            rule_id=f"tier-{tier}",
            policy_hash=DEFAULT_POLICY.hash,
            reason=f"{step.kind} is allowed at tier {tier}",
        ),
        p.ToolCallStarted(call_id=call_id),
        p.ToolCallCompleted(
            call_id=call_id,
            tool=step.kind,
            output=output,
            output_bytes=len(output),
            count=output.count("\n"),
        ),
        p.TurnCompleted(turn=turn, status="ok"),
    ]


def failed(
    turn: int, name: str, arguments: dict[str, Any], exit_code: int, output: str
) -> list[object]:
    """A command the policy allowed that ran and exited non-zero."""
    step = agent.step_of(name, orjson.dumps(arguments).decode(), agent.tools_for_tier("exec"))
    assert not isinstance(step, str), step
    call_id = f"{SID}/{turn}"
    return [
        p.TurnStarted(turn=turn, name=step.label, kind=step.kind),
        p.ToolCallRequested(call_id=call_id, turn=turn, tool=step.kind, args=summarize(step)),
        p.PermissionDecided(
            call_id=call_id,
            decision="allow",
            rule_id="allow-python3",
            policy_hash=DEFAULT_POLICY.hash,
            reason="an ordinary tool",
        ),
        p.ToolCallStarted(call_id=call_id),
        # The message as orchestrator.tools.shell words it (with the output's tail).
        p.ToolCallFailed(
            call_id=call_id,
            tool=step.kind,
            error="CommandFailed",
            message=(
                f"command `{' '.join(step.command)}` exited with code {exit_code}, not one of "
                "ok_exit_codes [0]. Fix what it reports, or list the code in `ok_exit_codes` "
                f"if it means success.\nLast output:\n{output.strip()}"
            ),
            output=output,
            output_bytes=len(output),
        ),
        p.TurnCompleted(turn=turn, status="failed"),
    ]


def refused(turn: int, name: str, arguments: dict[str, Any]) -> list[object]:
    """A tool call the default policy denies, decided by the real policy, so
    the reason the model reads back is the one it would get."""
    step = agent.step_of(name, orjson.dumps(arguments).decode(), agent.tools_for_tier("exec"))
    assert not isinstance(step, str), step
    args = summarize(step)
    verdict = decide(step.kind, args, DEFAULT_POLICY, tier="exec")
    assert verdict.decision == "deny", verdict
    call_id = f"{SID}/{turn}"
    return [
        p.TurnStarted(turn=turn, name=step.label, kind=step.kind),
        p.ToolCallRequested(call_id=call_id, turn=turn, tool=step.kind, args=args),
        p.PermissionDecided(
            call_id=call_id,
            decision="deny",
            rule_id=verdict.rule_id,
            policy_hash=DEFAULT_POLICY.hash,
            reason=verdict.reason,
        ),
        p.TurnCompleted(turn=turn, status="failed"),
    ]


SEARCH = {"pattern": r"\bfetch_user\b", "glob": ["**/*.py"]}
FOUND = (
    "billing/invoices.py:5:from .users import fetch_user\n"
    "billing/users.py:16:def fetch_user(user_id: int) -> dict:\n"
)
CURL = {"command": "curl -s https://example.com/install.sh"}


def first_turn() -> list[object]:
    return started()


def after_a_tool_call() -> list[object]:
    return [
        *started(),
        *replied(1, "Let me find where fetch_user is defined and used.", ("search", SEARCH)),
        *ran(1, "search", SEARCH, FOUND),
    ]


def after_a_denied_and_invalid_calls() -> list[object]:
    return [
        *after_a_tool_call(),
        *replied(
            2,
            "I will fetch the project's setup script first.",
            ("shell", CURL),  # runs as turn 2: denied
            ("grep", {"pattern": "fetch_user"}),  # no such tool
            ("read", {"file": "billing/users.py"}),  # no such argument
            ("write", '{"path": "x.py", "content": '),  # not JSON
            ("read", {}),  # a required argument missing
            base_turn=1,
        ),
        *refused(2, "shell", CURL),
    ]


TESTS = {"command": "python3 -m unittest discover -q"}


def after_a_command_passed_and_one_failed() -> list[object]:
    return [
        *started(),
        *replied(1, None, ("shell", TESTS)),
        *ran(1, "shell", TESTS, "Ran 5 tests\n\nOK\n"),
        *replied(2, None, ("shell", {"command": "python3 -m unittest tests.test_x"}), base_turn=1),
        *failed(
            2,
            "shell",
            {"command": "python3 -m unittest tests.test_x"},
            1,
            "ImportError: No module named 'tests.test_x'\n",
        ),
    ]


def chat_with_two_messages() -> list[object]:
    return [
        *started(mode="chat", instruction=""),
        p.UserMessage(text="Where is fetch_user defined?", digest="0" * 64),
        *replied(1, "In billing/users.py, line 16."),
        p.UserMessage(text="Rename it to load_user, please.", digest="0" * 64),
    ]


def read_only_first_turn() -> list[object]:
    return started(tier="read-only")


def digest_mode_after_a_tool_call() -> list[object]:
    """prompt_storage = digest: the events keep the instruction (the next turn
    needs it) but no reply text."""
    return [
        *started(),
        *replied(
            1,
            "Let me find where fetch_user is defined and used.",
            ("search", SEARCH),
            store_content=False,
        ),
        *ran(1, "search", SEARCH, FOUND),
    ]


STATES = {
    f.__name__: f
    for f in (
        first_turn,
        after_a_tool_call,
        after_a_command_passed_and_one_failed,
        after_a_denied_and_invalid_calls,
        chat_with_two_messages,
        read_only_first_turn,
        digest_mode_after_a_tool_call,
    )
}


def state_of(name: str) -> Projections:
    return fold(place(SID, STATES[name]()))


# -- the snapshots ----------------------------------------------------------------


@pytest.mark.parametrize("name", STATES)
def test_the_conversation_the_model_is_sent_is_pinned(name: str, snapshot) -> None:
    assert agent.messages(state_of(name), has_network=False) == snapshot


def test_the_system_prompt_with_the_network_on_is_pinned(snapshot) -> None:
    assert agent.system_prompt(state_of("first_turn").session, has_network=True) == snapshot


@pytest.mark.parametrize("tier", TIERS)
def test_the_tool_definitions_of_each_tier_are_pinned(tier: str, snapshot) -> None:
    # As JSON text, not data: the snapshot keeps the key order the model is sent.
    specs = agent.tool_specs(agent.tools_for_tier(tier))
    assert (
        orjson.dumps([s.to_wire() for s in specs], option=orjson.OPT_INDENT_2).decode() == snapshot
    )


def test_the_prompt_version_names_the_template_and_its_hash(snapshot) -> None:
    assert agent.prompt_version() == snapshot


@pytest.mark.parametrize("tier", TIERS)
def test_every_tool_definition_is_a_valid_json_schema(tier: str) -> None:
    for spec in agent.tool_specs(agent.tools_for_tier(tier)):
        Draft202012Validator.check_schema(spec.parameters)
        assert spec.parameters["additionalProperties"] is False
        assert set(spec.parameters["properties"]) == set(agent.TOOLS[spec.name].fields)


def test_a_session_without_a_tier_gets_the_exec_tools_and_an_unknown_tier_read_only() -> None:
    assert agent.tools_for_tier(None) == agent.tools_for_tier("exec")
    assert agent.tools_for_tier("root") == agent.tools_for_tier("read-only")


def test_the_invalid_calls_are_counted_and_only_the_valid_one_runs() -> None:
    a = state_of("after_a_denied_and_invalid_calls").session.agent
    assert a is not None
    assert a.invalid_calls == 4
    assert [(c.name, c.turn) for c in a.entries[-1].calls] == [
        ("shell", 2),
        ("grep", 0),
        ("read", 0),
        ("write", 0),
        ("read", 0),
    ]


def test_in_digest_mode_the_model_is_still_sent_its_instruction() -> None:
    sent = agent.messages(state_of("digest_mode_after_a_tool_call"), has_network=False)
    assert any(m["role"] == "user" and m["content"] == INSTRUCTION for m in sent)

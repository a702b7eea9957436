"""The agent loop's pure core: next_action, the conversation rebuilt from
events, tool calls validated into steps. Real events, folded; no mocks."""

from __future__ import annotations

from events import payloads as p
from events.projections import Projections, fold
from orchestrator.agent import core as agent
from orchestrator.agent.providers.base import ModelReply, ModelToolCall, TokenUsage
from orchestrator.run.steps import ReadStep, ShellStep
from tests.factories import place

SID = "s-1"
TOOLS = agent.tools_for_tier("exec")


def state(*payloads: object) -> Projections:
    return fold(place(SID, list(payloads)), Projections())


def started(
    mode: str = "job",
    max_turns: int = 5,
    budget: int | None = None,
    instruction: str = "rename fetch_user",
) -> list[object]:
    return [
        p.SessionStarted(job_id="j", target="/w", steps=()),
        p.PolicyAttached(name="default", hash="h" * 64, document={}, tier="exec"),
        p.AgentStarted(
            instruction=instruction,
            instruction_digest="d",
            mode=mode,
            provider="scripted",
            model="scripted",
            max_turns=max_turns,
            max_invalid_calls=1,
            token_budget=budget,
            prompt_version=agent.prompt_version(),
            tools=TOOLS,
        ),
    ]


def responded(
    n: int, content: str | None, *calls: p.ModelToolCall, tokens: int = 10
) -> list[object]:
    return [
        p.ModelRequested(
            model_turn=n, provider="scripted", model="scripted", messages=2, prompt_digest="x"
        ),
        p.ModelResponded(
            model_turn=n,
            model="scripted",
            latency_s=0.01,
            finish_reason="tool_calls" if calls else "stop",
            input_tokens=tokens,
            output_tokens=tokens,
            content=content,
            tool_calls=calls,
        ),
    ]


def call(
    turn: int, name: str = "read", args: str = '{"path": "a.py"}', error: str | None = None
) -> p.ModelToolCall:
    return p.ModelToolCall(id=f"call_{turn}", name=name, arguments=args, turn=turn, error=error)


def ran(
    turn: int, tool: str = "read", output: str = "print(1)\n", ok: bool = True, deny: bool = False
) -> list[object]:
    cid = f"{SID}/{turn}"
    out: list[object] = [
        p.TurnStarted(turn=turn, name=tool, kind=tool),
        p.ToolCallRequested(call_id=cid, turn=turn, tool=tool, args={}),
        p.PermissionDecided(
            call_id=cid,
            decision="deny" if deny else "allow",
            rule_id="deny-secrets" if deny else "allow",
            policy_hash="h" * 64,
            reason="the file holds credentials",
        ),
    ]
    if deny:
        return out + [p.TurnCompleted(turn=turn, status="failed")]
    out.append(p.ToolCallStarted(call_id=cid, planned_count=0))
    if ok:
        out.append(p.ToolCallCompleted(call_id=cid, tool=tool, output=output, count=1))
    else:
        out.append(
            p.ToolCallFailed(
                call_id=cid,
                tool=tool,
                error="CommandFailed",
                message="exit 1: tests failed",
                output="F\n",
            )
        )
    return out + [p.TurnCompleted(turn=turn, status="ok" if ok else "failed")]


# --- next_action ----------------------------------------------------------------------


def test_a_new_agent_asks_the_model_first() -> None:
    assert agent.next_action(state(*started())).kind == "model"
    assert agent.next_action(state(*started())).model_turn == 1


def test_each_tool_call_runs_once_in_order_then_the_model_is_asked_again() -> None:
    base = [*started(), *responded(1, "looking", call(1), call(2, args='{"path": "b.py"}'))]
    first = agent.next_action(state(*base))
    assert (first.kind, first.turn) == ("tool", 1) and first.step == ReadStep(
        path="a.py", continue_on_error=True, max_output_bytes=agent.AGENT_OUTPUT_BYTES
    )
    second = agent.next_action(state(*base, *ran(1)))
    assert (second.kind, second.turn) == ("tool", 2)
    after = agent.next_action(state(*base, *ran(1), *ran(2)))
    assert (after.kind, after.model_turn) == ("model", 2)


def test_a_reply_without_tool_calls_finishes_a_job_and_idles_a_chat() -> None:
    done = agent.next_action(state(*started(), *responded(1, "All renamed.")))
    assert (done.kind, done.message) == ("finish", "All renamed.")
    chat = agent.next_action(
        state(
            *started("chat", instruction=""),
            p.UserMessage(text="hi", digest="d"),
            *responded(1, "Hello."),
        )
    )
    assert chat.kind == "idle"


def test_limits_stop_the_session_with_what_to_raise() -> None:
    turns = [*started(max_turns=1), *responded(1, None, call(1)), *ran(1)]
    stop = agent.next_action(state(*turns))
    assert (stop.kind, stop.error) == ("fail", "MaxTurns") and "agent.max_turns" in stop.message
    bad = [
        *started(),
        *responded(
            1, None, call(0, "nope", error="no tool"), call(0, "read", "{", error="not JSON")
        ),
    ]
    stop = agent.next_action(state(*bad))
    assert (stop.kind, stop.error) == ("fail", "InvalidToolCalls")
    rich = [*started(budget=30), *responded(1, None, call(1), tokens=20), *ran(1)]
    stop = agent.next_action(state(*rich))
    assert (stop.kind, stop.error) == ("fail", "TokenQuota")
    assert state(*rich).quota.tokens_in == 20 and state(*rich).quota.model_calls == 1
    policed = [*started(), *rich[3:]]
    policed[1] = p.PolicyAttached(
        name="team", hash="h" * 64, tier="exec", document={"session_limits": {"tokens": 25}}
    )
    stop = agent.next_action(state(*policed))
    assert (stop.kind, stop.error) == ("fail", "TokenQuota") and "budget is 25" in stop.message


def test_a_waiting_confirmation_holds_the_loop() -> None:
    cid = f"{SID}/1"
    asked = [
        *started(),
        *responded(1, None, call(1, "delete")),
        p.TurnStarted(turn=1, name="delete", kind="delete"),
        p.ToolCallRequested(call_id=cid, turn=1, tool="delete", args={"path": "a.py"}),
        p.PermissionDecided(
            call_id=cid, decision="ask", rule_id="destructive-delete", policy_hash="h" * 64
        ),
        p.ConfirmationRequested(
            call_id=cid,
            turn=1,
            tool="delete",
            rule_id="destructive-delete",
            reason="deletes a file",
        ),
    ]
    assert agent.next_action(state(*asked)).kind == "wait"
    granted = agent.next_action(state(*asked, p.ConfirmationGranted(call_id=cid, by="u")))
    assert (granted.kind, granted.turn) == ("tool", 1)  # the runner starts exactly that call


def test_a_cancelled_turn_idles_and_its_late_answer_is_ignored() -> None:
    chat = [
        *started("chat", instruction=""),
        p.UserMessage(text="go", digest="d"),
        p.ModelRequested(
            model_turn=1, provider="scripted", model="scripted", messages=2, prompt_digest="x"
        ),
        p.AgentTurnCancelled(model_turn=1, by="user:me"),
    ]
    assert agent.next_action(state(*chat)).kind == "idle"
    late = state(*chat, *responded(1, "too late", call(1))[1:])
    assert agent.next_action(late).kind == "idle"
    again = agent.next_action(state(*chat, p.UserMessage(text="again", digest="d")))
    assert (again.kind, again.model_turn) == ("model", 2)


# --- the conversation ------------------------------------------------------------------


def test_the_conversation_is_rebuilt_from_events_with_every_outcome() -> None:
    st = state(
        *started(),
        *responded(
            1,
            "reading",
            call(1),
            call(2, args='{"path": ".env"}'),
            call(0, "nope", error="there is no tool 'nope'"),
        ),
        *ran(1),
        *ran(2, deny=True),
        *responded(2, None, call(3, "shell", '{"command": "pytest"}')),
        *ran(3, "shell", ok=False),
    )
    msgs = agent.messages(st, has_network=False)
    assert [m["role"] for m in msgs] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "tool",
        "assistant",
        "tool",
    ]
    assert "network is off" in msgs[0]["content"] and "/w" in msgs[0]["content"]
    assert msgs[1]["content"] == "rename fetch_user"
    assert msgs[2]["tool_calls"][0]["function"] == {"name": "read", "arguments": '{"path": "a.py"}'}
    assert msgs[3] == {"role": "tool", "tool_call_id": "call_1", "content": "print(1)\n"}
    assert msgs[4]["content"].startswith("denied by rule deny-secrets")
    assert msgs[5]["content"] == "error: there is no tool 'nope'"
    assert msgs[7]["content"].startswith("failed (CommandFailed): exit 1: tests failed")


# --- tool calls ------------------------------------------------------------------------


def reply(*calls: tuple[str, str]) -> ModelReply:
    return ModelReply(
        model="m",
        content=None,
        finish_reason="tool_calls",
        usage=TokenUsage(),
        tool_calls=tuple(
            ModelToolCall(id=f"c{i}", name=n, arguments=a) for i, (n, a) in enumerate(calls)
        ),
    )


def test_tool_calls_get_consecutive_turns_and_invalid_ones_an_error_to_read() -> None:
    calls, last = agent.tool_calls_of(
        reply(
            ("read", '{"path": "a"}'),
            ("rm", "{}"),
            ("read", "{bad"),
            ("read", '{"path": 3}'),
            ("read", '{"path": "a", "kind": "shell"}'),
            ("shell", '{"command": "ls -la"}'),
        ),
        TOOLS,
        base_turn=2,
    )
    assert [c["turn"] for c in calls] == [3, 0, 0, 0, 0, 4] and last == 4
    errors = [c["error"] for c in calls]
    assert "there is no tool 'rm'" in errors[1]
    assert "not valid JSON" in errors[2]
    assert "path: Input should be a valid string" in errors[3]
    assert "takes no argument 'kind'" in errors[4]
    assert agent.step_of("shell", calls[5]["arguments"], TOOLS) == ShellStep(
        command=("ls", "-la"), continue_on_error=True, max_output_bytes=agent.AGENT_OUTPUT_BYTES
    )


def test_a_tool_above_the_tier_or_holding_a_secret_is_refused() -> None:
    ro = agent.tools_for_tier("read-only")
    assert "shell" not in ro and "write" not in ro
    assert "above this session's permission tier" in str(agent.step_of("shell", "{}", ro))
    calls, _ = agent.tool_calls_of(
        reply(("write", '{"path": "k", "content": "KEY-abcdef123"}')),
        TOOLS,
        0,
        secrets=("KEY-abcdef123",),
    )
    assert calls[0]["turn"] == 0 and "looks like a secret" in calls[0]["error"]
    assert "KEY-abcdef123" not in calls[0]["arguments"]


def test_tool_schemas_come_from_the_step_models() -> None:
    specs = {s.name: s for s in agent.tool_specs(TOOLS)}
    assert set(specs) == set(TOOLS)
    assert specs["read"].parameters["required"] == ["path"]
    assert specs["shell"].parameters["properties"]["command"]["type"] == "string"
    assert all(s.parameters["additionalProperties"] is False for s in specs.values())
    assert all("continue_on_error" not in s.parameters["properties"] for s in specs.values())


def test_the_prompt_tells_a_session_with_web_tools_how_it_reaches_the_web() -> None:
    tools = agent.tools_for_tier("exec", network=True)
    events = [
        *started()[:2],
        p.AgentStarted(
            instruction="read the docs",
            instruction_digest="d",
            mode="job",
            provider="scripted",
            model="scripted",
            max_turns=5,
            max_invalid_calls=1,
            token_budget=None,
            prompt_version=agent.prompt_version(),
            tools=tools,
        ),
    ]
    with_web = agent.system_prompt(state(*events).session, has_network=False)
    assert "Use web_fetch" in with_web and "The network is off" not in with_web
    without = agent.system_prompt(state(*started()).session, has_network=False)
    assert "The network is off" in without and "web_fetch" not in without

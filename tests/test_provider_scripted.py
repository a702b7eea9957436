"""The scripted provider: deterministic replies chosen by the request alone,
built as real chat completions and parsed by the same code as a real
endpoint's, and scripts that fail at load time with the turn to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion

from orchestrator.agent.providers.base import (
    ModelReply,
    ModelRequest,
    ModelToolCall,
    TokenUsage,
    parse_completion,
)
from orchestrator.agent.providers.openai_compat import OpenAIProvider
from orchestrator.agent.providers.scripted import ScriptedProvider, check_turns, load_script
from orchestrator.errors import ConfigError
from tests.fake_chat_server import FakeChatServer, Reply, tool_call

TURNS: list[dict[str, Any]] = [
    {
        "content": "Let me find the callers.",
        "tool_calls": [
            {"name": "search", "arguments": {"pattern": "fetch_user", "glob": ["*.py"]}}
        ],
    },
    {
        "tool_calls": [
            {"name": "replace", "arguments": {"pattern": "fetch_user", "replacement": "load_user"}},
            {"name": "shell", "arguments": '{"command": "pytest -q"'},  # malformed
            {"name": "status"},
        ],
        "usage": {"input": 120, "output": 30},
    },
    {"content": "Renamed fetch_user to load_user.", "finish_reason": "length"},
]
SYSTEM = {"role": "system", "content": "You are a coding agent."}
USER = {"role": "user", "content": "Rename fetch_user to load_user."}


def assistant(n: int) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call_{n}_1",
                "type": "function",
                "function": {"name": "search", "arguments": "{}"},
            }
        ],
    }


def tool(n: int) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": f"call_{n}_1", "content": "3 matches"}


def request_after(turns_done: int) -> ModelRequest:
    """The request the loop sends after `turns_done` model turns (each an
    assistant message and its tool result)."""
    messages = [SYSTEM, USER]
    for n in range(1, turns_done + 1):
        messages += [assistant(n), tool(n)]
    return ModelRequest(model="scripted", messages=messages)


def estimate(messages: list[dict[str, Any]]) -> int:
    return len(orjson.dumps(messages)) // 4


def test_the_turn_that_answers_is_the_number_of_assistant_messages_in_the_request():
    provider = ScriptedProvider(TURNS)
    first, second, third = (provider.complete(request_after(n)) for n in range(3))
    assert first.content == "Let me find the callers."
    assert [c.name for c in second.tool_calls] == ["replace", "shell", "status"]
    assert third.content == "Renamed fetch_user to load_user."


def test_only_assistant_messages_count_not_tool_or_user_messages():
    many_others = ModelRequest(
        model="scripted",
        messages=[SYSTEM, USER, USER, tool(1), tool(2), {"role": "user", "content": "go on"}],
    )
    assert ScriptedProvider(TURNS).complete(many_others).content == "Let me find the callers."


def test_the_same_request_gets_the_same_reply_from_any_instance():
    request = request_after(1)
    replies = [ScriptedProvider(TURNS).complete(request) for _ in range(2)]
    provider = ScriptedProvider(TURNS)
    replies += [
        provider.complete(request),
        provider.complete(request_after(0)),
        provider.complete(request),
    ]
    assert replies[0] == replies[1] == replies[2] == replies[4]
    assert replies[3] != replies[0]


def test_arguments_given_as_mappings_become_json_and_strings_pass_unchanged():
    reply = ScriptedProvider(TURNS).complete(request_after(1))
    assert reply.tool_calls == (
        ModelToolCall(
            "call_2_1",
            "replace",
            orjson.dumps({"pattern": "fetch_user", "replacement": "load_user"}).decode(),
        ),
        ModelToolCall("call_2_2", "shell", '{"command": "pytest -q"'),  # for the agent to reject
        ModelToolCall("call_2_3", "status", "{}"),
    )
    assert orjson.loads(reply.tool_calls[0].arguments) == TURNS[1]["tool_calls"][0]["arguments"]


def test_a_whole_reply_with_token_counts_estimated_at_four_characters_a_token():
    arguments = '{"pattern":"fetch_user","glob":["*.py"]}'
    sent = {
        "role": "assistant",
        "content": "Let me find the callers.",
        "tool_calls": [
            {
                "id": "call_1_1",
                "type": "function",
                "function": {"name": "search", "arguments": arguments},
            }
        ],
    }
    assert ScriptedProvider(TURNS, model="scripted-1").complete(request_after(0)) == ModelReply(
        model="scripted-1",
        content="Let me find the callers.",
        tool_calls=(ModelToolCall("call_1_1", "search", arguments),),
        finish_reason="tool_calls",
        usage=TokenUsage(
            input_tokens=estimate(request_after(0).messages),
            output_tokens=len(orjson.dumps(sent)) // 4,
        ),
        attempts=1,
    )


def test_usage_in_the_script_overrides_the_estimate():
    usage = ScriptedProvider(TURNS).complete(request_after(1)).usage
    assert usage == TokenUsage(input_tokens=120, output_tokens=30, cached_tokens=None)


def test_the_finish_reason_in_the_script_is_the_reply_s():
    assert ScriptedProvider(TURNS).complete(request_after(2)).finish_reason == "length"


def test_when_the_script_runs_out_the_model_says_so_and_stops():
    for turns_done in (3, 7):
        reply = ScriptedProvider(TURNS).complete(request_after(turns_done))
        assert (reply.content, reply.tool_calls, reply.finish_reason) == (
            "The script has no more turns; stopping.",
            (),
            "stop",
        )
    assert ScriptedProvider([]).complete(request_after(0)).finish_reason == "stop"


def test_the_reply_is_what_parse_completion_makes_of_the_same_wire_completion():
    request = request_after(1)
    wire = {
        "id": "chatcmpl-elsewhere",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "scripted",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_2_1",
                            "type": "function",
                            "function": {
                                "name": "replace",
                                "arguments": '{"pattern":"fetch_user","replacement":"load_user"}',
                            },
                        },
                        {
                            "id": "call_2_2",
                            "type": "function",
                            "function": {"name": "shell", "arguments": '{"command": "pytest -q"'},
                        },
                        {
                            "id": "call_2_3",
                            "type": "function",
                            "function": {"name": "status", "arguments": "{}"},
                        },
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
    }
    assert ScriptedProvider(TURNS).complete(request) == parse_completion(
        ChatCompletion.model_validate(wire)
    )


def test_a_scripted_reply_equals_the_real_provider_s_for_the_same_completion():
    turns = [
        {
            "content": "Looking.",
            "tool_calls": [{"name": "search", "arguments": '{"pattern": "x"}'}],
            "usage": {"input": 11, "output": 7},
        }
    ]
    served = Reply(
        content="Looking.",
        tool_calls=[tool_call("call_1_1", "search", '{"pattern": "x"}')],
        model="scripted",
        prompt_tokens=11,
        completion_tokens=7,
    )
    request = request_after(0)
    with FakeChatServer() as server:
        server.push(served)
        real = OpenAIProvider(base_url=server.url, api_key="k", max_attempts=1)
        try:
            assert real.complete(request) == ScriptedProvider(turns).complete(request)
        finally:
            real.client.close()


# -- load_script --------------------------------------------------------------

EXAMPLE = (
    Path(__file__).parent.parent / "orchestrator" / "examples" / "scripts" / "agent-rename.yaml"
)


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "script.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_example_script_loads_and_replays():
    provider = ScriptedProvider.from_file(EXAMPLE)
    assert provider.complete(request_after(0)).tool_calls[0].name == "search"


def test_a_script_may_be_a_list_or_a_mapping_with_turns(tmp_path):
    listed = load_script(write(tmp_path, "- content: hi\n- tool_calls: [{name: search}]\n"))
    mapped = load_script(
        write(tmp_path, "turns:\n  - content: hi\n  - tool_calls: [{name: search}]\n")
    )
    assert listed == mapped == [{"content": "hi"}, {"tool_calls": [{"name": "search"}]}]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("content: hi\n", "must be a list of turns"),
        ("just text\n", "must be a list of turns"),
        ("", "must be a list of turns"),
        ("- content: hi\n- plain string\n", "must be a list of turns"),
        (
            "- content: hi\n- contents: typo\n",
            "turn 2 of the model script {path} has unknown keys ['contents']; use content",
        ),
        (
            "- tool_calls:\n    - {name: search}\n    - {arguments: {pattern: x}}\n",
            "turn 1 of the model script {path}: tool call 2 needs a `name`",
        ),
        ("- tool_calls:\n    - search\n", "turn 1 of the model script {path}: tool call 1 needs a"),
        (
            "- content: hi\n- tool_calls: [{name: search, args: {pattern: x}}]\n",
            "turn 2 of the model script {path}: tool call 1 has unknown keys ['args']; use name and "
            "arguments",
        ),
        (
            "- tool_calls: {name: search}\n",
            "turn 1 of the model script {path}: `tool_calls` must be a list",
        ),
        (
            "- {content: hi, finish_reason: done}\n",
            "turn 1 of the model script {path}: `finish_reason` 'done' is not one of stop, length",
        ),
        ("- content: 42\n", "turn 1 of the model script {path}: `content` must be text; quote it"),
        (
            "- {content: hi, usage: {input: many}}\n",
            "turn 1 of the model script {path}: `usage` "
            "must be a mapping like {input: 120, output: 30}",
        ),
        ("- {content: hi, usage: {prompt: 3}}\n", "`usage` must be a mapping"),
        ("- content: [unclosed\n", "is not valid YAML"),
    ],
    ids=[
        "mapping-without-turns",
        "scalar",
        "empty",
        "non-mapping-turn",
        "unknown-key",
        "call-without-name",
        "call-as-string",
        "call-unknown-key",
        "calls-not-a-list",
        "finish-reason",
        "content-not-text",
        "usage-not-a-count",
        "usage-unknown-key",
        "bad-yaml",
    ],
)
def test_a_bad_script_fails_at_load_naming_the_turn_and_what_to_write(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_script(path)
    assert expected.replace("{path}", str(path)) in str(info.value)


def test_a_missing_script_says_which_setting_names_it(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the model script .*`model_script`"):
        load_script(tmp_path / "absent.yaml")


def test_a_script_that_is_not_utf8_says_so(tmp_path):
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_script(write(tmp_path, b"- content: \xff\xfe\n"))


def test_inline_turns_are_checked_the_same_way():
    check_turns(TURNS, "job.yaml")
    with pytest.raises(
        ConfigError,
        match=r"turn 2 of the model script job\.yaml: tool call 1 "
        r"needs a `name`",
    ):
        check_turns([{"content": "hi"}, {"tool_calls": [{"arguments": {}}]}], "job.yaml")

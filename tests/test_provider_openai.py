"""OpenAIProvider against a local server speaking the chat-completions wire
format: the real SDK, HTTP stack and SSE decoder run; nothing is patched.
Waits between retries go to an injected `sleep`, so the tests record what
the provider would wait instead of waiting."""

from __future__ import annotations

import email.utils
import json
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from orchestrator.agent.providers.base import (
    ModelError,
    ModelReply,
    ModelRequest,
    ModelToolCall,
    TokenUsage,
    ToolSpec,
)
from orchestrator.agent.providers.openai_compat import OpenAIProvider, retry_after_s
from tests.fake_chat_server import FakeChatServer, Hang, Raw, Reply, error, tool_call

KEY = "sk-test-0123456789abcdefNeverInAMessage"

SEARCH = ToolSpec(
    "search",
    "Find a pattern in the workspace.",
    {"type": "object", "properties": {"pattern": {"type": "string"}}, "required": ["pattern"]},
)
REPLACE = ToolSpec(
    "replace",
    "Replace a pattern.",
    {
        "type": "object",
        "properties": {"pattern": {"type": "string"}, "replacement": {"type": "string"}},
    },
)
REQUEST = ModelRequest(
    model="gpt-test",
    messages=[
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Rename fetch_user to load_user."},
    ],
    tools=(SEARCH, REPLACE),
    max_output_tokens=256,
    temperature=0.0,
)

# Raw argument text, spacing and non-ASCII included: it must arrive unchanged.
RAW_ARGS = '{"pattern":  "fetch_user", "path": "src/übung.py"}'
TOOL_REPLY = Reply(
    content="Let me find the callers.",
    tool_calls=[
        tool_call("call_a1", "search", RAW_ARGS),
        tool_call("call_a2", "replace", {"pattern": "fetch_user", "replacement": "load_user"}),
    ],
    prompt_tokens=120,
    completion_tokens=30,
    cached_tokens=64,
    piece=3,
)


@pytest.fixture(scope="module")
def running_server() -> Iterator[FakeChatServer]:
    with FakeChatServer() as s:
        yield s


@pytest.fixture
def server(running_server: FakeChatServer) -> Iterator[FakeChatServer]:
    running_server.reset()
    yield running_server
    running_server.reset()


class Sleeps(list[float]):
    """The waits a provider asked for, instead of sleeping; one per module,
    emptied for each test, so providers can be reused across tests."""


@pytest.fixture(scope="module")
def module_sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def sleeps(module_sleeps: Sleeps) -> Sleeps:
    module_sleeps.clear()
    return module_sleeps


@pytest.fixture(scope="module")
def providers(
    running_server: FakeChatServer, module_sleeps: Sleeps
) -> Iterator[dict[tuple[Any, ...], OpenAIProvider]]:
    # An SDK client costs tens of milliseconds to build (its TLS context), so
    # each configuration is built once per module.
    made: dict[tuple[Any, ...], OpenAIProvider] = {}
    yield made
    for provider in made.values():
        provider.client.close()


@pytest.fixture
def make(
    running_server: FakeChatServer, sleeps: Sleeps, providers: dict[tuple[Any, ...], OpenAIProvider]
) -> Callable[..., OpenAIProvider]:
    """An OpenAIProvider for the fake server; waits are recorded in `sleeps`."""

    def make(**kw: Any) -> OpenAIProvider:
        args: dict[str, Any] = {
            "base_url": running_server.url,
            "api_key": KEY,
            "timeout_s": 5.0,
            "max_attempts": 5,
            "retry_budget_s": 60.0,
            "stream": False,
        } | kw
        key = tuple(sorted(args.items()))
        if key not in providers:
            providers[key] = OpenAIProvider(**args, sleep=sleeps.append)
        return providers[key]

    return make


def failure(provider: OpenAIProvider, request: ModelRequest = REQUEST) -> ModelError:
    with pytest.raises(ModelError) as info:
        provider.complete(request)
    return info.value


# -- replies ------------------------------------------------------------------


def test_tool_calls_become_a_reply_with_ids_names_raw_arguments_and_cached_usage(server, make):
    server.push(TOOL_REPLY)
    assert make().complete(REQUEST) == ModelReply(
        model="fake-model",
        content="Let me find the callers.",
        tool_calls=(
            ModelToolCall("call_a1", "search", RAW_ARGS),
            ModelToolCall(
                "call_a2", "replace", '{"pattern": "fetch_user", "replacement": "load_user"}'
            ),
        ),
        finish_reason="tool_calls",
        usage=TokenUsage(input_tokens=120, output_tokens=30, cached_tokens=64),
        attempts=1,
    )


def test_the_request_carries_the_key_the_messages_and_the_tools(server, make):
    server.push(Reply(content="ok"))
    make().complete(REQUEST)
    [sent] = server.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["model"] == "gpt-test"
    assert sent.body["messages"] == REQUEST.messages
    assert sent.body["tools"] == [SEARCH.to_wire(), REPLACE.to_wire()]
    assert (sent.body["max_tokens"], sent.body["temperature"]) == (256, 0.0)
    assert not sent.body.get("stream")


def test_a_request_without_tools_sends_no_tools_key(server, make):
    server.push(Reply(content="ok"))
    make().complete(ModelRequest(model="gpt-test", messages=REQUEST.messages))
    assert "tools" not in server.requests[0].body


def test_a_plain_text_completion_has_no_tool_calls_and_no_cached_count(server, make):
    server.push(
        Reply(content="Renamed fetch_user to load_user.", prompt_tokens=40, completion_tokens=9)
    )
    assert make().complete(REQUEST) == ModelReply(
        model="fake-model",
        content="Renamed fetch_user to load_user.",
        tool_calls=(),
        finish_reason="stop",
        usage=TokenUsage(input_tokens=40, output_tokens=9, cached_tokens=None),
    )


@pytest.mark.parametrize(
    "reply",
    [
        TOOL_REPLY,
        Reply(tool_calls=[tool_call("call_x", "search", '{"pattern": "a"}')], cached_tokens=0),
        Reply(content="All done; nothing else to change.", piece=5),
        Reply(content="The answer was cut", finish_reason="length"),
        Reply(tool_calls=[tool_call("call_bad", "search", '{"pattern": ')]),  # malformed, as sent
    ],
    ids=["text-and-tools", "tools-only", "text", "length", "malformed-arguments"],
)
def test_streaming_gives_the_same_reply_as_not_streaming(server, make, reply):
    server.push(reply, reply)
    plain = make(stream=False).complete(REQUEST)
    streamed = make(stream=True).complete(REQUEST)
    assert streamed == plain
    sent = server.requests[1].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_a_stream_that_ends_before_the_model_finished_is_retried(server, make):
    server.push(Reply(content="half an ans", truncate=True), Reply(content="a whole answer"))
    reply = make(stream=True).complete(REQUEST)
    assert (reply.content, reply.attempts) == ("a whole answer", 2)


def test_a_stream_cut_short_every_time_fails_as_transient(server, make):
    server.push(Reply(content="half", truncate=True))
    exc = failure(make(stream=True, max_attempts=1))
    assert (exc.error, exc.transient, exc.attempts) == ("StreamIncomplete", True, 1)


# -- retries ------------------------------------------------------------------


def test_429_is_retried_after_the_seconds_retry_after_asks(server, make, sleeps):
    server.push(
        error(
            429,
            "Rate limit reached",
            type="requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": "1"},
        ),
        Reply(content="ok"),
    )
    reply = make().complete(REQUEST)
    assert (reply.content, reply.attempts) == ("ok", 2)
    assert sleeps == [1.0]
    assert len(server.requests) == 2


def test_429_is_retried_after_the_milliseconds_retry_after_ms_asks(server, make, sleeps):
    server.push(
        error(429, "Rate limit reached", headers={"retry-after-ms": "250", "Retry-After": "1"}),
        Reply(content="ok"),
    )
    assert make().complete(REQUEST).attempts == 2
    assert sleeps == [0.25]


def test_500_502_503_are_retried_with_growing_jittered_backoff(server, make, sleeps):
    server.push(
        error(500, "internal", type="server_error"),
        Raw("<html>Bad Gateway</html>", status=502, content_type="text/html"),
        error(503, "overloaded", type="server_error"),
        Reply(content="ok"),
    )
    reply = make().complete(REQUEST)
    assert (reply.content, reply.attempts) == ("ok", 4)
    assert len(sleeps) == 3
    assert all(0 <= wait <= 0.5 * 2**n for n, wait in enumerate(sleeps))


def test_retries_stop_at_max_attempts_with_a_transient_error(server, make, sleeps):
    server.push(*[error(503, "overloaded", type="server_error")] * 3, Reply(content="late"))
    exc = failure(make(max_attempts=3))
    assert (exc.error, exc.transient, exc.attempts) == ("ModelHTTP503", True, 3)
    assert "503" in str(exc) and "overloaded" in str(exc)
    assert len(server.requests) == 3 and server.pending == 1
    assert len(sleeps) == 2


def test_a_retry_after_beyond_the_budget_is_handed_back_instead_of_slept(server, make, sleeps):
    server.push(
        error(429, "Rate limit reached", headers={"Retry-After": "30"}), Reply(content="ok")
    )
    exc = failure(make(retry_budget_s=5.0))
    assert (exc.error, exc.transient, exc.retry_after_s, exc.attempts) == (
        "ModelHTTP429",
        True,
        30.0,
        1,
    )
    assert sleeps == []


# -- failures that need a person ----------------------------------------------


@pytest.mark.parametrize(
    "response, kind, hint",
    [
        (
            error(401, f"Incorrect API key provided: {KEY}.", code="invalid_api_key"),
            "ModelAuthFailed",
            "ORCH_MODEL_API_KEY",
        ),
        (
            error(403, "You are not allowed to sample from this model", type="permission_error"),
            "ModelForbidden",
            "permissions",
        ),
        (
            error(
                404,
                "The model `gpt-test` does not exist or you do not have access to it.",
                code="model_not_found",
            ),
            "ModelNotFound",
            "model_name",
        ),
        (
            error(400, "'tools' is not supported with this model.", param="tools"),
            "ModelBadRequest",
            "tool calling",
        ),
        (
            error(422, "Unprocessable: messages[1].content", type="BadRequestError"),
            "ModelBadRequest",
            "tool calling",
        ),
        (
            error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                type="insufficient_quota",
                code="insufficient_quota",
            ),
            "ModelQuotaExceeded",
            "billing",
        ),
    ],
    ids=["401", "403", "404", "400", "422", "429-quota"],
)
def test_errors_a_person_must_fix_fail_at_once_and_say_what_to_check(
    server, make, sleeps, response, kind, hint
):
    server.push(response, Reply(content="never fetched"))
    exc = failure(make())
    assert (exc.error, exc.transient, exc.attempts) == (kind, False, 1)
    assert hint in str(exc)
    assert json.loads(response.body)["error"]["message"][:20] in str(exc)
    assert len(server.requests) == 1 and sleeps == []


def test_a_base_url_without_v1_is_a_404_that_says_so(server, make):
    exc = failure(make(base_url=server.root))
    assert (exc.error, exc.transient, exc.attempts) == ("ModelNotFound", False, 1)
    assert "/v1" in str(exc) and "model_name" in str(exc)
    assert server.requests[0].path == "/chat/completions"


def test_malformed_json_is_a_clear_transient_error(server, make):
    server.push(Raw('{"id": "chatcmpl-1", "object": "chat.completion", "choices": ['))
    exc = failure(make(max_attempts=1))
    assert (exc.error, exc.transient) == ("MalformedResponse", True)
    assert "not a chat completion" in str(exc) and "model_base_url" in str(exc)


def test_malformed_json_in_a_stream_is_the_same_error(server, make):
    server.push(
        Raw('data: {"id": "chatcmpl-1", "choices": [\n\n', content_type="text/event-stream")
    )
    exc = failure(make(stream=True, max_attempts=1))
    assert (exc.error, exc.transient) == ("MalformedResponse", True)


def test_a_web_page_instead_of_an_api_fails_at_once(server, make):
    server.push(Raw("<html><body>Welcome to nginx!</body></html>", content_type="text/html"))
    exc = failure(make())
    assert (exc.error, exc.transient, exc.attempts) == ("MalformedResponse", False, 1)
    assert "not JSON" in str(exc) and "Welcome to nginx" in str(exc)


@pytest.mark.parametrize(
    "body",
    [
        "{}",
        '{"object": "chat.completion", "choices": []}',
        '{"error": {"message": "upstream provider failed"}}',
    ],
)
def test_json_that_is_no_completion_is_an_empty_response(server, make, body):
    server.push(Raw(body))
    exc = failure(make(max_attempts=1))
    assert (exc.error, exc.transient) == ("EmptyResponse", True)
    assert "no choices" in str(exc)


def test_a_stream_with_no_chunks_is_a_malformed_response(server, make):
    server.push(Raw("data: [DONE]\n\n", content_type="text/event-stream"))
    exc = failure(make(stream=True, max_attempts=1))
    assert (exc.error, exc.transient) == ("MalformedResponse", True)
    assert "model_stream" in str(exc)


# -- time and connections -----------------------------------------------------


def test_a_hang_hits_the_timeout_and_is_a_retried_model_timeout(server, make):
    server.push(Hang(), Hang())
    exc = failure(make(timeout_s=0.3, max_attempts=2))
    assert (exc.error, exc.transient, exc.attempts) == ("ModelTimeout", True, 2)
    assert "model_timeout_s" in str(exc)


def test_a_stream_that_stalls_after_its_first_chunk_times_out(server, make):
    server.push(Reply(content="slow answer", stall_s=30))
    exc = failure(make(stream=True, timeout_s=0.3, max_attempts=1))
    assert (exc.error, exc.transient) == ("ModelTimeout", True)


def test_no_server_at_the_url_is_unreachable_and_transient(sleeps):
    with FakeChatServer() as gone:
        url = gone.url
    provider = OpenAIProvider(base_url=url, api_key=KEY, max_attempts=1, sleep=sleeps.append)
    exc = failure(provider)
    provider.client.close()
    assert (exc.error, exc.transient) == ("ModelUnreachable", True)
    assert "model_base_url" in str(exc)


# -- the key stays out of messages --------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        error(401, f"Incorrect API key provided: {KEY}. Find your key at platform.openai.com."),
        error(400, f"bad request from key {KEY}"),
        error(429, f"key {KEY} is over its limit", headers={"Retry-After": "0"}),
        error(503, f"overloaded (key {KEY})"),
        Raw(f"<html>Unauthorized: Bearer {KEY}</html>", content_type="text/html"),
        Raw(json.dumps({"error": {"message": f"bad key {KEY}"}})),
        Raw(f'{{"error": "{KEY}", "choices": ['),
    ],
    ids=["401", "400", "429", "503", "html", "200-error", "malformed"],
)
def test_the_api_key_never_appears_in_an_error_message(server, make, response):
    server.push(response, response)
    exc = failure(make(max_attempts=2))
    assert KEY not in str(exc)
    assert KEY[8:] not in str(exc) and KEY not in repr(exc.args)
    logged = "".join(traceback.format_exception(exc))  # as log.exception() writes it
    assert KEY[8:] not in logged


# -- Retry-After --------------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Retry-After": "1"}, 1.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),
        ({"Retry-After": "-5"}, 0.0),
        ({"Retry-After": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"Retry-After": email.utils.formatdate(NOW + 30)}, 30.0),  # "-0000": UTC, no zone
        ({"Retry-After": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "nan"}, None),
        ({"retry-after-ms": "nan"}, None),
        ({}, None),
        ({"Content-Type": "application/json"}, None),
    ],
    ids=[
        "seconds",
        "fraction",
        "ms",
        "ms-wins",
        "bad-ms-falls-back",
        "negative",
        "date",
        "date-0000",
        "past-date",
        "garbage",
        "empty",
        "inf",
        "nan",
        "nan-ms",
        "none",
        "other",
    ],
)
def test_retry_after_reads_seconds_milliseconds_and_dates(headers, expected):
    assert retry_after_s(headers, now=NOW) == expected

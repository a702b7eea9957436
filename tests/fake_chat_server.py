"""A local chat-completions endpoint that speaks the OpenAI wire format, so
the real SDK (and its HTTP stack, SSE decoder and error mapping) runs in tests.

Each POST to /v1/chat/completions takes the next response off a queue the
test filled, and records what the client sent. A `Reply` is served the way
the request asks: as one JSON body, or, when the request says `stream: true`,
as server-sent events split the way real servers split them (a role chunk,
content in pieces, each tool call's arguments across several chunks, a
finish chunk, a usage chunk when `stream_options.include_usage` is set, then
`data: [DONE]`). So one `Reply` pins what streaming and non-streaming must
both parse to.

    with FakeChatServer() as server:
        server.push(error(429, "slow down", headers={"Retry-After": "1"}),
                    Reply(content="hi"))
        provider = OpenAIProvider(base_url=server.url, api_key="k", ...)

An empty queue answers 418 with a message saying so, which the provider
does not retry: a test that sends more requests than it queued fails at
once and says why.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeChatServer", "Reply", "Raw", "Hang", "Recorded", "error", "tool_call"]

CHAT_PATH = "/v1/chat/completions"


def tool_call(id: str, name: str, arguments: str | Mapping[str, Any]) -> dict[str, Any]:
    """A tool call as it appears in a chat completion; mappings become JSON."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": id, "type": "function", "function": {"name": name, "arguments": args}}


@dataclass
class Reply:
    """A successful completion, served as JSON or as SSE chunks."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None  # None: "tool_calls" if there are any, else "stop"
    model: str = "fake-model"
    prompt_tokens: int = 11
    completion_tokens: int = 7
    cached_tokens: int | None = None  # None: no prompt_tokens_details at all
    id: str = "chatcmpl-fake"
    # Streaming only: split into pieces this long; stop before the finish chunk
    # (a connection that ends early); stall this long after the first chunk.
    piece: int = 4
    truncate: bool = False
    stall_s: float = 0.0

    def finish(self) -> str:
        return self.finish_reason or ("tool_calls" if self.tool_calls else "stop")

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {
                "cached_tokens": self.cached_tokens,
                "audio_tokens": 0,
            }
        return usage

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content, "refusal": None}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish()}
            ],
            "usage": self.usage(),
        }

    def chunks(self, include_usage: bool) -> Iterator[dict[str, Any]]:
        """The completion as chat.completion.chunk objects. The role chunk
        carries `content: ""`, as vLLM and llama.cpp send it."""

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            body: dict[str, Any] = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": self.model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                body["usage"] = None
            return body

        yield chunk({"role": "assistant", "content": ""})
        text = self.content or ""
        for i in range(0, len(text), self.piece):
            yield chunk({"content": text[i : i + self.piece]})
        for index, call in enumerate(self.tool_calls):
            fn = call["function"]
            yield chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": fn["name"], "arguments": ""},
                        }
                    ]
                }
            )
            args = fn["arguments"]
            for i in range(0, len(args), self.piece):
                yield chunk(
                    {
                        "tool_calls": [
                            {"index": index, "function": {"arguments": args[i : i + self.piece]}}
                        ]
                    }
                )
        if self.truncate:
            return
        yield chunk({}, self.finish())
        if include_usage:
            yield {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": self.model,
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": self.usage(),
            }


@dataclass
class Raw:
    """Exactly these bytes, status and headers (malformed bodies, odd content types)."""

    body: bytes | str
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    """Answer nothing for `seconds` (longer than the client's timeout); the
    server's stop releases it early."""

    seconds: float = 30.0


def error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Raw:
    """An OpenAI-style error response."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return Raw(json.dumps(body), status=status, headers=dict(headers or {}))


@dataclass(frozen=True)
class Recorded:
    """One request as the server got it; header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or the text when it is not JSON


class FakeChatServer:
    """A threaded HTTP server on 127.0.0.1 and an ephemeral port."""

    def __init__(self) -> None:
        self._queue: deque[Reply | Raw | Hang] = deque()
        self._lock = threading.Lock()
        self._release = threading.Event()  # set to wake the handlers that hang now
        self.requests: list[Recorded] = []
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def root(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """The base_url a client is given (ends in /v1, like OpenAI's)."""
        return self.root + "/v1"

    def push(self, *responses: Reply | Raw | Hang) -> None:
        with self._lock:
            self._queue.extend(responses)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def reset(self) -> None:
        """Forget the queue and the requests, and release hung handlers, so
        one server can serve test after test."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self._release.set()
            self._release = threading.Event()

    def _hang(self, seconds: float) -> bool:
        """Wait `seconds`, or less if the test ends; True when released early.
        (Every event a handler may wait on is set by reset() or stop().)"""
        with self._lock:
            release = self._release
        return release.wait(seconds)

    def start(self) -> FakeChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._release.set()  # wakes handlers that hang
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, request: Recorded) -> Reply | Raw | Hang | None:
        with self._lock:
            self.requests.append(request)
            return self._queue.popleft() if self._queue else None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected


def _handler_for(server: FakeChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as real servers
        disable_nagle_algorithm = True  # headers and body go as separate writes

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            text = self.rfile.read(length).decode("utf-8", "replace")
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            headers = {k.lower(): v for k, v in self.headers.items()}
            response = server._record(Recorded("POST", self.path, headers, body))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if self.path != CHAT_PATH:
                    self._raw(error(404, f"Not Found: {self.path}", type="not_found"))
                elif response is None:
                    self._raw(
                        error(
                            418,
                            "the fake chat server has no response queued for "
                            "this request; push() one more",
                        )
                    )
                elif isinstance(response, Hang):
                    server._hang(response.seconds)
                    self._raw(error(504, "the fake chat server hung on purpose"))
                elif isinstance(response, Raw):
                    self._raw(response)
                elif isinstance(body, dict) and body.get("stream"):
                    options = body.get("stream_options") or {}
                    self._stream(response, bool(options.get("include_usage")))
                else:
                    self._raw(Raw(json.dumps(response.completion())))

        def _raw(self, raw: Raw) -> None:
            data = raw.body.encode() if isinstance(raw.body, str) else raw.body
            self.send_response(raw.status)
            self.send_header("Content-Type", raw.content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in raw.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, reply: Reply, include_usage: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for n, chunk in enumerate(reply.chunks(include_usage)):
                self._event(f"data: {json.dumps(chunk)}\n\n")
                if n == 0 and reply.stall_s:
                    if server._hang(reply.stall_s):
                        return
            if not reply.truncate:
                self._event("data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _event(self, text: str) -> None:
            data = text.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler

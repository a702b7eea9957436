"""The provider interface and the one parse path from the wire format.

A provider turns a `ModelRequest` (messages as chat-completions dicts, tool
specs) into an `openai.types.chat.ChatCompletion`; `parse_completion` makes
the `ModelReply` the agent loop reads. Keeping the SDK's type as the seam
means the scripted provider exercises exactly what a real endpoint does
after the response is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from openai.types.chat import ChatCompletion

from orchestrator.errors import OrchestratorError

__all__ = [
    "ToolSpec",
    "ModelRequest",
    "ModelToolCall",
    "TokenUsage",
    "ModelReply",
    "ModelError",
    "Provider",
    "parse_completion",
]


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: name, what it does, its JSON-schema arguments."""

    name: str
    description: str
    parameters: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True)
class ModelRequest:
    model: str
    messages: list[dict[str, Any]]  # chat-completions messages, as sent
    tools: tuple[ToolSpec, ...] = ()
    max_output_tokens: int | None = None
    temperature: float | None = None


@dataclass(frozen=True)
class ModelToolCall:
    id: str
    name: str
    arguments: str  # the JSON text the model wrote, unparsed


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int | None = None  # None: the endpoint does not report it


@dataclass(frozen=True)
class ModelReply:
    model: str
    content: str | None
    tool_calls: tuple[ModelToolCall, ...]
    finish_reason: str
    usage: TokenUsage = field(default_factory=TokenUsage)
    attempts: int = 1  # 1 + the retries the provider made


class ModelError(OrchestratorError):
    """A model call that failed. `transient` errors (429, 5xx, timeouts) were
    retried until the budget ran out; the others need a person to fix
    something (key, model name, request), which the message says."""

    def __init__(
        self,
        message: str,
        *,
        error: str,
        transient: bool,
        retry_after_s: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.error = error
        self.transient = transient
        self.retry_after_s = retry_after_s
        self.attempts = attempts  # set by the provider when its retries gave up


class Provider(Protocol):
    """Both providers end in `parse_completion`: what the loop sees of a
    scripted reply and of a real one is built by the same code."""

    name: str

    def complete(self, request: ModelRequest) -> ModelReply: ...


def parse_completion(completion: ChatCompletion, attempts: int = 1) -> ModelReply:
    """The agent loop's view of a response: first choice, its text and tool
    calls, why it stopped and what it cost. Empty text is no text (streamed
    replies start with `content: ""`, the same reply unstreamed has null)."""
    if not getattr(completion, "choices", None):
        said = getattr(completion, "error", None)
        raise ModelError(
            f"the model {getattr(completion, 'model', None)!r} returned no "
            f"choices{f' ({str(said)[:300]})' if said else ''}; the endpoint is "
            "not behaving like chat-completions. Check `model_base_url`.",
            error="EmptyResponse",
            transient=True,
        )
    try:
        choice = completion.choices[0]
        message = choice.message
        calls = tuple(
            ModelToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments or "")
            for c in (message.tool_calls or ())
            if getattr(c, "function", None)
        )
        usage = TokenUsage()
        if completion.usage is not None:
            details = completion.usage.prompt_tokens_details
            usage = TokenUsage(
                input_tokens=completion.usage.prompt_tokens or 0,
                output_tokens=completion.usage.completion_tokens or 0,
                cached_tokens=details.cached_tokens if details else None,
            )
        content = message.content or None
    except (AttributeError, TypeError) as exc:  # the SDK does not validate what it is sent
        raise ModelError(
            f"the model {getattr(completion, 'model', None)!r} returned a "
            f"completion that is missing parts ({exc}); check that "
            "`model_base_url` speaks chat-completions.",
            error="MalformedResponse",
            transient=True,
        ) from exc
    return ModelReply(
        model=completion.model,
        content=content,
        tool_calls=calls,
        finish_reason=choice.finish_reason or ("tool_calls" if calls else "stop"),
        usage=usage,
        attempts=attempts,
    )

"""Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama,
llama.cpp server, LiteLLM) through the official SDK.

The SDK's own retries are off: tenacity retries here, so the policy (which
errors, how long, honouring `Retry-After`) is in one place and the number of
attempts lands in the ModelResponded (or ModelFailed) event. The key comes
from the settings as a SecretStr and goes nowhere but the Authorization
header: error messages are masked with it, since servers echo keys back.
"""

from __future__ import annotations

import dataclasses
import email.utils
import math
import random
import time
from collections.abc import Mapping
from datetime import UTC
from typing import Any

import openai
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from orchestrator.agent.providers.base import ModelError, ModelReply, ModelRequest, parse_completion
from orchestrator.guard.masking import mask

__all__ = ["OpenAIProvider", "retry_after_s", "classify"]

MAX_WAIT_S = 60.0


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout_s: float = 60.0,
        max_attempts: int = 5,
        retry_budget_s: float = 120.0,
        stream: bool = False,
        sleep: Any = time.sleep,
    ) -> None:
        self.client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s, max_retries=0
        )
        self.base_url = str(self.client.base_url)
        self.max_attempts, self.retry_budget_s = max_attempts, retry_budget_s
        self.stream = stream
        self._sleep = sleep
        self._secrets = (api_key,) if api_key else ()

    def complete(self, request: ModelRequest) -> ModelReply:
        """One reply, after retrying transient failures within `max_attempts`
        and `retry_budget_s`; a ModelError says how many attempts it took."""
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts) | _stop_before(self.retry_budget_s),
            wait=_wait,
            retry=retry_if_exception(lambda e: getattr(e, "transient", False)),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            reply = retrying(self._once, request)
        except ModelError as exc:
            exc.attempts = retrying.statistics.get("attempt_number", 1)
            raise
        return dataclasses.replace(reply, attempts=retrying.statistics["attempt_number"])

    def _once(self, request: ModelRequest) -> ModelReply:
        try:
            return parse_completion(self._call(request))
        except ModelError as exc:
            exc.args = (mask(str(exc), self._secrets),)
            if _mentions(exc.__cause__, self._secrets):
                # A logged traceback prints the SDK error (body included) too.
                exc.__cause__, exc.__suppress_context__ = None, True
            raise

    def _call(self, request: ModelRequest) -> ChatCompletion:
        kwargs: dict[str, Any] = {"model": request.model, "messages": request.messages}
        if request.tools:
            kwargs["tools"] = [t.to_wire() for t in request.tools]
        if request.max_output_tokens is not None:
            kwargs["max_tokens"] = request.max_output_tokens
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        try:
            if not self.stream:
                completion = self.client.chat.completions.create(**kwargs)
                if not isinstance(completion, ChatCompletion):  # the SDK hands back text
                    raise ModelError(
                        f"the endpoint {self.base_url} answered with something that is not "
                        f"JSON ({str(completion)[:80]!r}); check `model_base_url` points at an "
                        "OpenAI-compatible /v1 API.",
                        error="MalformedResponse",
                        transient=False,
                    )
                return completion
            return self._streamed(kwargs)
        except openai.OpenAIError as exc:
            raise classify(exc, request.model, self.base_url) from exc
        except ValueError as exc:  # a body (or SSE event) that is not JSON at all
            raise ModelError(
                f"the endpoint {self.base_url} answered with something that is "
                f"not a chat completion ({exc}); check `model_base_url` points "
                "at an OpenAI-compatible /v1 API.",
                error="MalformedResponse",
                transient=True,
            ) from exc

    def _streamed(self, kwargs: dict[str, Any]) -> ChatCompletion:
        # The accumulated snapshot, not get_final_completion(): that one raises
        # on finish_reason "length"/"content_filter", which the non-streamed
        # path returns as a reply, and the two must agree.
        state = ChatCompletionStreamState()
        chunks = 0
        with self.client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kwargs
        ) as stream:
            for chunk in stream:
                state.handle_chunk(chunk)
                chunks += 1
        if not chunks:
            raise ModelError(
                f"the endpoint {self.base_url} ended the stream without a single "
                "chunk; check that it speaks chat-completions, or turn "
                "`model_stream` off.",
                error="MalformedResponse",
                transient=True,
            )
        completion = state.current_completion_snapshot
        if completion.choices and not completion.choices[0].finish_reason:
            raise ModelError(
                f"the stream from {self.base_url} ended before the model finished "
                "(no finish_reason); it is retried.",
                error="StreamIncomplete",
                transient=True,
            )
        return completion


def classify(exc: Exception, model: str, base_url: str) -> ModelError:
    """An SDK error as a ModelError that says what to check."""
    status = getattr(exc, "status_code", None)
    detail = _detail(exc)
    if isinstance(exc, openai.APITimeoutError):
        return ModelError(
            f"the model endpoint {base_url} did not answer in time; it is "
            "retried. Raise `model_timeout_s` for slow local models.",
            error="ModelTimeout",
            transient=True,
        )
    if isinstance(exc, openai.APIConnectionError):
        return ModelError(
            f"cannot connect to the model endpoint {base_url} ({exc}); check "
            "that the server runs and `model_base_url` is right.",
            error="ModelUnreachable",
            transient=True,
        )
    if isinstance(exc, openai.APIResponseValidationError):
        return ModelError(
            f"the endpoint {base_url} returned a malformed response ({detail}); "
            "check that it speaks chat-completions.",
            error="MalformedResponse",
            transient=True,
        )
    headers = getattr(getattr(exc, "response", None), "headers", {}) or {}
    if status == 401:
        return ModelError(
            f"the endpoint {base_url} refused the API key (401: {detail}); set "
            "`ORCH_MODEL_API_KEY` (or model_api_key_file) to a valid key.",
            error="ModelAuthFailed",
            transient=False,
        )
    if status == 403:
        return ModelError(
            f"the key may not use model {model!r} at {base_url} (403: {detail}); "
            "check the key's permissions or pick another model.",
            error="ModelForbidden",
            transient=False,
        )
    if status == 404:
        return ModelError(
            f"model {model!r} or the endpoint was not found at {base_url} "
            f"(404: {detail}); check `model_name`, and that `model_base_url` "
            "ends in /v1 for most servers.",
            error="ModelNotFound",
            transient=False,
        )
    if status in (400, 422):
        return ModelError(
            f"the endpoint rejected the request ({status}: {detail}); check that "
            f"model {model!r} supports tool calling and the context is not too "
            "long.",
            error="ModelBadRequest",
            transient=False,
        )
    if status == 429 and _code(exc) == "insufficient_quota":
        # OpenAI sends an exhausted quota as a 429 too; waiting does not fix it.
        return ModelError(
            f"the account behind the API key has no quota left at {base_url} "
            f"(429: {detail}); check its plan and billing.",
            error="ModelQuotaExceeded",
            transient=False,
        )
    if status in (408, 409, 429) or (status is not None and status >= 500):
        return ModelError(
            f"the model endpoint is busy or failing ({status}: {detail}); retried with backoff.",
            error=f"ModelHTTP{status}",
            transient=True,
            retry_after_s=retry_after_s(headers),
        )
    return ModelError(
        f"the model call failed ({type(exc).__name__}: {detail}).",
        error="ModelError",
        transient=False,
    )


def _mentions(exc: BaseException | None, secrets: tuple[str, ...]) -> bool:
    """Whether an exception's text or body holds one of `secrets`."""
    text = f"{exc!s} {getattr(exc, 'body', '')!s}" if exc is not None else ""
    return any(s in text for s in secrets)


def _error_body(exc: Exception) -> Mapping[str, Any]:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            return err
    return {}


def _code(exc: Exception) -> Any:
    return getattr(exc, "code", None) or _error_body(exc).get("code")


def _detail(exc: Exception) -> str:
    message = _error_body(exc).get("message")
    if message:
        return str(message)[:300]
    return str(getattr(exc, "message", exc))[:300]


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The delay a response asks for: `retry-after-ms`, `retry-after` in
    seconds or as an HTTP date; None when absent or unreadable."""
    lower = {k.lower(): v for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            seconds = float(lower[name]) / scale
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(seconds):
            return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(lower["retry-after"].strip())
    except (KeyError, AttributeError, TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC with no zone named, not local time
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _wait(state: RetryCallState) -> float:
    """Retry-After when the server says it (capped), else exponential backoff
    with full jitter: 0.5, 1, 2, 4 ... seconds, at most MAX_WAIT_S."""
    exc = state.outcome.exception() if state.outcome else None
    asked = getattr(exc, "retry_after_s", None)
    if asked is not None:
        return min(asked, MAX_WAIT_S)
    return random.uniform(0, min(MAX_WAIT_S, 0.5 * 2 ** (state.attempt_number - 1)))


def _stop_before(budget_s: float) -> Any:
    """Stop when the next wait would end past the budget, rather than sleep
    through it: a long Retry-After goes back to the caller (the task retries
    with that countdown) instead of holding a worker."""

    def stop(state: RetryCallState) -> bool:
        return (state.seconds_since_start or 0.0) + getattr(
            state, "upcoming_sleep", 0.0
        ) >= budget_s

    return stop

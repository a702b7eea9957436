"""Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama,
llama.cpp server, LiteLLM) through the official SDK.

The SDK's own retries are off: tenacity retries here, so the policy (which
errors, how long, honouring `Retry-After`) is in one place and the number of
attempts lands in the ModelResponded event. The key comes from the settings
as a SecretStr and goes nowhere but the Authorization header.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from typing import Any

import openai
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion
from tenacity import (RetryCallState, Retrying, retry_if_exception, stop_after_attempt,
                      stop_after_delay)

from orchestrator.providers.base import ModelError, ModelReply, ModelRequest, parse_completion

__all__ = ["OpenAIProvider", "retry_after_s", "classify"]

MAX_WAIT_S = 60.0


class OpenAIProvider:
    name = "openai"

    def __init__(self, *, base_url: str | None, api_key: str | None, timeout_s: float = 60.0,
                 max_attempts: int = 5, retry_budget_s: float = 120.0, stream: bool = False,
                 sleep: Any = time.sleep) -> None:
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed",
                                    timeout=timeout_s, max_retries=0)
        self.base_url = str(self.client.base_url)
        self.max_attempts, self.retry_budget_s = max_attempts, retry_budget_s
        self.stream = stream
        self._sleep = sleep

    def complete(self, request: ModelRequest) -> ModelReply:
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.retry_budget_s),
            wait=_wait, retry=retry_if_exception(lambda e: getattr(e, "transient", False)),
            sleep=self._sleep, reraise=True)
        for attempt in retrying:
            with attempt:
                completion = self._once(request)
            return parse_completion(completion, attempt.retry_state.attempt_number)
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _once(self, request: ModelRequest) -> ChatCompletion:
        kwargs: dict[str, Any] = {"model": request.model, "messages": request.messages}
        if request.tools:
            kwargs["tools"] = [t.to_wire() for t in request.tools]
        if request.max_output_tokens is not None:
            kwargs["max_tokens"] = request.max_output_tokens
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        try:
            if not self.stream:
                return self.client.chat.completions.create(**kwargs)
            state = ChatCompletionStreamState()
            for chunk in self.client.chat.completions.create(
                    stream=True, stream_options={"include_usage": True}, **kwargs):
                state.handle_chunk(chunk)
            return state.get_final_completion()
        except openai.OpenAIError as exc:
            raise classify(exc, request.model, self.base_url) from exc
        except ValueError as exc:      # a body that is not JSON at all
            raise ModelError(f"the endpoint {self.base_url} answered with something that is "
                             f"not a chat completion ({exc}); check `model_base_url` points "
                             "at an OpenAI-compatible /v1 API.", error="MalformedResponse",
                             transient=True) from exc


def classify(exc: Exception, model: str, base_url: str) -> ModelError:
    """An SDK error as a ModelError that says what to check."""
    status = getattr(exc, "status_code", None)
    detail = _detail(exc)
    if isinstance(exc, openai.APITimeoutError):
        return ModelError(f"the model endpoint {base_url} did not answer in time; it is "
                          "retried. Raise `model_timeout_s` for slow local models.",
                          error="ModelTimeout", transient=True)
    if isinstance(exc, openai.APIConnectionError):
        return ModelError(f"cannot connect to the model endpoint {base_url} ({exc}); check "
                          "that the server runs and `model_base_url` is right.",
                          error="ModelUnreachable", transient=True)
    if isinstance(exc, openai.APIResponseValidationError):
        return ModelError(f"the endpoint {base_url} returned a malformed response ({detail}); "
                          "check that it speaks chat-completions.", error="MalformedResponse",
                          transient=True)
    headers = getattr(getattr(exc, "response", None), "headers", {}) or {}
    if status == 401:
        return ModelError(f"the endpoint {base_url} refused the API key (401: {detail}); set "
                          "`ORCH_MODEL_API_KEY` (or model_api_key_file) to a valid key.",
                          error="ModelAuthFailed", transient=False)
    if status == 403:
        return ModelError(f"the key may not use model {model!r} at {base_url} (403: {detail}); "
                          "check the key's permissions or pick another model.",
                          error="ModelForbidden", transient=False)
    if status == 404:
        return ModelError(f"model {model!r} or the endpoint was not found at {base_url} "
                          f"(404: {detail}); check `model_name`, and that `model_base_url` "
                          "ends in /v1 for most servers.", error="ModelNotFound",
                          transient=False)
    if status in (400, 422):
        return ModelError(f"the endpoint rejected the request ({status}: {detail}); check that "
                          f"model {model!r} supports tool calling and the context is not too "
                          "long.", error="ModelBadRequest", transient=False)
    if status == 429 or (status is not None and status >= 500) or status == 408:
        return ModelError(f"the model endpoint is busy or failing ({status}: {detail}); "
                          "retried with backoff.", error=f"ModelHTTP{status}", transient=True,
                          retry_after_s=retry_after_s(headers))
    return ModelError(f"the model call failed ({type(exc).__name__}: {detail}).",
                      error="ModelError", transient=False)


def _detail(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping) and err.get("message"):
            return str(err["message"])[:300]
    return str(getattr(exc, "message", exc))[:300]


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The delay a response asks for: `retry-after-ms`, `retry-after` in
    seconds or as an HTTP date; None when absent or unreadable."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        if "retry-after-ms" in lower:
            return max(0.0, float(lower["retry-after-ms"]) / 1000)
        if "retry-after" in lower:
            value = lower["retry-after"].strip()
            try:
                return max(0.0, float(value))
            except ValueError:
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - (time.time() if now is None else now))
    except (TypeError, ValueError, OverflowError):
        return None
    return None


def _wait(state: RetryCallState) -> float:
    """Retry-After when the server says it (capped), else exponential backoff
    with full jitter: 0.5, 1, 2, 4 ... seconds, at most MAX_WAIT_S."""
    exc = state.outcome.exception() if state.outcome else None
    asked = getattr(exc, "retry_after_s", None)
    if asked is not None:
        return min(asked, MAX_WAIT_S)
    return random.uniform(0, min(MAX_WAIT_S, 0.5 * 2 ** (state.attempt_number - 1)))

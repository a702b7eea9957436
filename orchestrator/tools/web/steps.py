"""The network steps as the runner and the agent call them: `run_step`
turns a FetchStep, WebSearchStep or BrowserStep into a ToolResult under the
session's network policy, with this process's circuit breakers; the
retries it made become ToolCallRetried payloads (the runner's `_retry_events`), and the
breaker transitions CircuitChanged events on `circuit:<host>`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from orchestrator.errors import ToolError
from orchestrator.run.steps import BrowserStep, FetchStep, WebSearchStep
from orchestrator.tools.base import ToolResult
from orchestrator.tools.web import fetch as web
from orchestrator.tools.web import search as websearch
from orchestrator.tools.web.breaker import Breakers, breakers_for, record_transition

__all__ = ["run_step", "BrowserUnavailableError"]


class BrowserUnavailableError(ToolError):
    """The browser tool is not installed in this build."""


_sink: dict[str, Any] = {}


def set_event_store(store: Any, actor: str) -> None:
    """Where breaker transitions are recorded (the runner's store)."""
    _sink["store"], _sink["actor"] = store, actor


@lru_cache(maxsize=1)
def _breakers() -> Breakers:
    from orchestrator.config.settings import get_settings

    settings = get_settings()

    def changed(host: str, previous: str, state: str, failures: int, opened_at: Any) -> None:
        store = _sink.get("store")
        if store is not None:
            record_transition(
                store,
                _sink["actor"],
                host,
                previous,
                state,
                failures,
                opened_at,
                settings.breaker_reset_timeout_s,
            )

    return breakers_for(settings, on_change=changed)


def run_step(
    step: FetchStep | WebSearchStep | BrowserStep,
    net: Any,
    *,
    store: Any = None,
    actor: str = "worker",
) -> ToolResult:
    """Run one network step; raises ToolError (EgressDenied, CircuitOpen,
    FetchFailed, ToolTimeout, ...). Output is masked by the caller."""
    from orchestrator.config.settings import get_settings

    settings = get_settings()
    if store is not None:
        set_event_store(store, actor)
    if isinstance(step, FetchStep):
        limits = web.limits_from(
            settings, max_bytes=step.max_bytes, max_redirects=step.max_redirects
        )
        try:
            result = web.fetch(step.url, net, limits=limits, breakers=_breakers())
        except ToolError as exc:
            if isinstance(exc.result, web.FetchResult):
                text, size = web.render(exc.result, step.max_output_bytes)
                exc.result = _with_output(exc.result, text, size)
            raise
        text, size = web.render(result, step.max_output_bytes)
        return _with_output(result, text, size)
    if isinstance(step, WebSearchStep):
        provider = websearch.provider_from(settings)
        results = provider.search(
            step.query,
            net,
            limit=step.limit,
            limits=websearch.limits(settings),
            breakers=_breakers(),
        )
        text = websearch.render(step.query, results)
        data = text.encode()
        if len(data) > step.max_output_bytes:
            text = data[: step.max_output_bytes].decode(errors="ignore") + "\n[output truncated]"
        return ToolResult(output=text, output_bytes=len(data), count=len(results))
    try:
        from orchestrator.tools.web import browser
    except ImportError:
        raise BrowserUnavailableError(
            "browser tool not available: orchestrator.tools.web.browser is not installed in this "
            "build (it needs playwright and a system Chromium)"
        ) from None
    request = browser.BrowserRequest.model_validate(step.request_fields())
    return browser.run(request, net=net, timeout_s=step.timeout_s)  # type: ignore[no-any-return]


def _with_output(result: web.FetchResult, text: str, size: int) -> web.FetchResult:
    from dataclasses import replace

    return replace(result, output=text, output_bytes=size, count=result.status)

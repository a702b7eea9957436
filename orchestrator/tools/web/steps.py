"""The network steps as the runner and the agent call them: `Network.run_step`
turns a FetchStep, WebSearchStep or BrowserStep into a ToolResult under the
session's network policy, with this process's circuit breakers; the retries
it made become ToolCallRetried payloads (the tool's `record`), and the
breaker transitions CircuitChanged events on `circuit:<host>`.

A `Network` is made from the settings values it needs (fetch, retry, search,
breaker and browser settings) by whoever builds the runner, and reports to
the observer it was given; it reads no settings itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator import lazy
from orchestrator.errors import ToolError
from orchestrator.ops.observer import NO_OBSERVER, Observer
from orchestrator.run.steps import BrowserStep, FetchStep, WebSearchStep
from orchestrator.tools.base import ToolResult
from orchestrator.tools.web import fetch as web
from orchestrator.tools.web import search as websearch
from orchestrator.tools.web.breaker import Breakers, breakers_for, record_transition

__all__ = ["Network", "BrowserUnavailableError"]


class BrowserUnavailableError(ToolError):
    """The browser tool is not installed in this build."""


@dataclass
class Network:
    """This process's network tools under one set of settings values."""

    settings: Any  # orchestrator.config.Settings, or anything with its fields
    observer: Observer = NO_OBSERVER
    # Where breaker transitions are recorded: the store of the last call.
    _sink: tuple[Any, str] | None = field(default=None, init=False, repr=False)
    _breakers: Breakers | None = field(default=None, init=False, repr=False)

    def breakers(self) -> Breakers:
        if self._breakers is None:
            self._breakers = breakers_for(self.settings, on_change=self._changed)
        return self._breakers

    def _changed(self, host: str, previous: str, state: str, failures: int, opened_at: Any) -> None:
        if self._sink is None:
            return
        store, actor = self._sink
        self.observer.circuit_changed(host, state)
        record_transition(
            store,
            actor,
            host,
            previous,
            state,
            failures,
            opened_at,
            self.settings.breaker_reset_timeout_s,
        )

    def run_step(
        self,
        step: FetchStep | WebSearchStep | BrowserStep,
        net: Any,
        *,
        store: Any = None,
        actor: str = "worker",
    ) -> ToolResult:
        """Run one network step; raises ToolError (EgressDenied, CircuitOpen,
        FetchFailed, ToolTimeout, ...). Output is masked by the caller."""
        if store is not None:
            self._sink = (store, actor)
        if isinstance(step, FetchStep):
            return self._fetch(step, net)
        if isinstance(step, WebSearchStep):
            return self._search(step, net)
        return self._browse(step, net)

    def _fetch(self, step: FetchStep, net: Any) -> ToolResult:
        limits = web.limits_from(
            self.settings, max_bytes=step.max_bytes, max_redirects=step.max_redirects
        )
        try:
            result = web.fetch(step.url, net, limits=limits, breakers=self.breakers())
        except ToolError as exc:
            if isinstance(exc.result, web.FetchResult):
                text, size = web.render(exc.result, step.max_output_bytes)
                exc.result = _with_output(exc.result, text, size)
            raise
        text, size = web.render(result, step.max_output_bytes)
        return _with_output(result, text, size)

    def _search(self, step: WebSearchStep, net: Any) -> ToolResult:
        provider = websearch.provider_from(self.settings)
        results = provider.search(
            step.query,
            net,
            limit=step.limit,
            limits=websearch.limits(self.settings),
            breakers=self.breakers(),
        )
        text = websearch.render(step.query, results)
        data = text.encode()
        if len(data) > step.max_output_bytes:
            text = data[: step.max_output_bytes].decode(errors="ignore") + "\n[output truncated]"
        return ToolResult(output=text, output_bytes=len(data), count=len(results))

    def _browse(self, step: BrowserStep, net: Any) -> ToolResult:
        try:
            # playwright and the pool load when a browser step first runs.
            browser = lazy.attr("orchestrator.tools.web.browser")
            pools = lazy.attr("orchestrator.tools.web.browser_pool")
        except ImportError:
            raise BrowserUnavailableError(
                "browser tool not available: orchestrator.tools.web.browser is not installed "
                "in this build (it needs playwright and a system Chromium)"
            ) from None
        request = browser.BrowserRequest.model_validate(step.request_fields())
        pool = pools.get_pool(pools.PoolConfig.from_settings(self.settings), self.observer)
        return browser.run(  # type: ignore[no-any-return]
            request,
            net=net,
            pool=pool,
            timeout_s=step.timeout_s,
            artifacts_dir=self.settings.artifacts_dir if request.output == "screenshot" else None,
        )


def _with_output(result: web.FetchResult, text: str, size: int) -> web.FetchResult:
    return replace(result, output=text, output_bytes=size, count=result.status)

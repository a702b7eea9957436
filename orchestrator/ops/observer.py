"""What the running code reports, as a protocol: the runner, the agent loop and
the web tools call an `Observer` they were given, never the metrics module.

`orchestrator.ops.metrics.OBSERVER` fans the calls out to the configured
reporters; a composition root (the worker's setup, the CLI, the API) passes
it in. Everything defaults to `NO_OBSERVER`, so a test or a library caller
that passes nothing reports nowhere.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    """Every call returns quickly and never raises into the caller's work."""

    def tool_call(self, tool: str, outcome: str, seconds: float, error: str | None = None) -> None:
        """A tool call ended: `outcome` ok, error (non-zero exit) or failed (`error` says why)."""

    def permission(self, decision: str, rule: str) -> None:
        """The policy decided a request."""

    def quota_denied(self, tool: str, rule: str) -> None:
        """A quota or rate rule refused (or deferred) a request."""

    def model_call(self, model: str, outcome: str, seconds: float) -> None:
        """A model provider answered (or failed to)."""

    def model_tokens(self, model: str, direction: str, n: int) -> None:
        """Tokens a model call used, by direction (input, output, cached)."""

    def circuit_changed(self, host: str, state: str) -> None:
        """A circuit breaker for `host` entered `state`."""

    def browser_pool(self, state: str, n: int) -> None:
        """How many of this process's browser instances are in `state` now."""


class NoObserver:
    """Reports nowhere: the default wherever nobody passed an observer."""

    def tool_call(self, tool: str, outcome: str, seconds: float, error: str | None = None) -> None:
        pass

    def permission(self, decision: str, rule: str) -> None:
        pass

    def quota_denied(self, tool: str, rule: str) -> None:
        pass

    def model_call(self, model: str, outcome: str, seconds: float) -> None:
        pass

    def model_tokens(self, model: str, direction: str, n: int) -> None:
        pass

    def circuit_changed(self, host: str, state: str) -> None:
        pass

    def browser_pool(self, state: str, n: int) -> None:
        pass


NO_OBSERVER: Observer = NoObserver()

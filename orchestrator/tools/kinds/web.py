"""The network tools (fetch, web_search, browser): read-only for the
workspace, run under the session's egress rules; the retries a call made are
recorded as ToolCallRetried before its outcome."""

from __future__ import annotations

from typing import Any

from events import payloads as p
from orchestrator import lazy
from orchestrator.errors import ToolError
from orchestrator.tools.base import Plan, ToolResult
from orchestrator.tools.interface import BaseTool, ToolCall

# httpx, pybreaker and the browser load when a network step first runs.
_web = lazy.module("orchestrator.tools.web.steps")
_networks: list[Any] = []  # the last Network made: its breakers live as long as it


def network(call: ToolCall) -> Any:
    """The `orchestrator.tools.web.steps.Network` for the call's settings and
    observer, made once and kept while they stay the same objects. The
    settings come from whoever built the runner (a composition root)."""
    settings = call.settings
    if settings is None:
        raise ToolError(
            "a network step needs the settings its runner was built with (egress, "
            "timeouts, the browser); build it as Runner(store, actor, settings=...)"
        )
    last = _networks[-1] if _networks else None
    if last is None or last.settings is not settings or last.observer is not call.observer:
        last = _web.Network(settings, call.observer)
        _networks[:] = [last]
    return last


class NetworkTool(BaseTool):
    def run(self, call: ToolCall, step: Any, planned: Plan | None) -> ToolResult:
        return network(call).run_step(  # type: ignore[no-any-return]
            step, call.policy.doc.network, store=call.store, actor=call.actor
        )

    def record(self, call_id: str, result: Any) -> list[Any]:
        """ToolCallRetried for every retry the call made (the failed ones too:
        `result` is then the error's partial result, or None)."""
        return [
            p.ToolCallRetried(
                call_id=call_id,
                attempt=r.attempt,
                reason=r.reason,
                delay_s=r.delay_s,
                host=r.host,
            )
            for r in getattr(result, "retries", ())
        ]


class FetchTool(NetworkTool):
    kind = "fetch"


class WebSearchTool(NetworkTool):
    kind = "web_search"


class BrowserTool(NetworkTool):
    kind = "browser"

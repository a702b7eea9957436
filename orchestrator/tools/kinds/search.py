"""The code search tool: read-only, so it runs in the same append as its decision."""

from __future__ import annotations

from orchestrator.run.steps import SearchStep
from orchestrator.tools import search
from orchestrator.tools.base import Plan, ToolResult
from orchestrator.tools.interface import BaseTool, ToolCall


class SearchTool(BaseTool):
    kind = "search"

    def run(self, call: ToolCall, step: SearchStep, planned: Plan | None) -> ToolResult:
        return search.search(call.workspace, step, hidden=call.hidden)

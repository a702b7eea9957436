"""Which tool runs which step kind. Adding a tool: write its class (see
`orchestrator.tools.interface`), add it to `TOOLS` here, and its step model
to `orchestrator.run.steps.Step`."""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.errors import ToolInputError
from orchestrator.tools.interface import Tool
from orchestrator.tools.kinds.files import (
    DeleteTool,
    ListTool,
    PatchTool,
    ReadTool,
    ReplaceTool,
    WriteTool,
)
from orchestrator.tools.kinds.search import SearchTool
from orchestrator.tools.kinds.shell import ShellTool
from orchestrator.tools.kinds.web import BrowserTool, FetchTool, WebSearchTool


class Registry:
    """Tools by step kind; one tool per kind."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            if tool.kind in self._tools:
                raise ValueError(f"two tools for step kind {tool.kind!r}")
            self._tools[tool.kind] = tool

    def __getitem__(self, kind: str) -> Tool:
        try:
            return self._tools[kind]
        except KeyError:
            raise ToolInputError(
                f"no tool runs steps of kind {kind!r}; known kinds: {', '.join(self.kinds)}"
            ) from None

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._tools)

    def with_tools(self, *tools: Tool) -> Registry:
        """This registry with `tools` added, or replacing the ones of their kinds."""
        return Registry({**self._tools, **{t.kind: t for t in tools}}.values())


TOOLS = Registry(
    [
        ReadTool(),
        ListTool(),
        WriteTool(),
        PatchTool(),
        DeleteTool(),
        ReplaceTool(),
        SearchTool(),
        ShellTool(),
        FetchTool(),
        WebSearchTool(),
        BrowserTool(),
    ]
)

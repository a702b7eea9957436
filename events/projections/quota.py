"""QuotaUsage: tool calls by kind, model tokens, shell CPU and wall seconds,
bytes written and output, and the recent call times rate limits count,
folded by `QuotaFold`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from events.envelope import construct_trusted
from events.projections.frozen import Fields, Frozen, Handler, timestamp

RATE_WINDOW = 256  # most recent tool-call times kept for sliding-window rate limits


class QuotaUsage(Frozen):
    tool_calls: tuple[tuple[str, int], ...] = ()  # (tool, count), sorted by tool
    tool_failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    model_calls: int = 0
    shell_cpu_s: float = 0.0
    shell_wall_s: float = 0.0
    bytes_written: int = 0
    output_bytes: int = 0
    recent_calls: tuple[datetime, ...] = ()
    recent_tools: tuple[str, ...] = ()  # the tool of each of recent_calls

    def calls_of(self, tool: str) -> int:
        return dict(self.tool_calls).get(tool, 0)

    def calls_since(self, since: datetime) -> int:
        return sum(1 for t in self.recent_calls if t >= since)

    def recent_by_tool(self) -> dict[str, tuple[datetime, ...]]:
        """The kept call times per tool (what per-tool rate limits count)."""
        out: dict[str, list[datetime]] = {}
        for tool, at in zip(self.recent_tools, self.recent_calls):
            out.setdefault(tool, []).append(at)
        return {k: tuple(v) for k, v in out.items()}


_SUMS = (
    "tool_failures",
    "tokens_in",
    "tokens_out",
    "tokens_cached",
    "model_calls",
    "shell_cpu_s",
    "shell_wall_s",
    "bytes_written",
    "output_bytes",
)


class QuotaFold:
    """A QuotaUsage in progress. A call that ran costs its resources whether it
    completed or failed; a call that never started (denied) costs nothing.
    Call times are kept as the events carry them and parsed for the result
    only: at most RATE_WINDOW of them."""

    __slots__ = ("_start", "_sums", "_counts", "_recent", "_recent_tools", "_changed")

    def __init__(self, start: QuotaUsage) -> None:
        self._start = start  # the result, as long as no event changes it
        self._sums = {k: getattr(start, k) for k in _SUMS}
        self._counts = dict(start.tool_calls)
        self._recent: list[datetime | str] = list(start.recent_calls)
        self._recent_tools = list(start.recent_tools)
        self._changed = False

    def _ran(self, pl: Fields, at: datetime | str) -> dict[str, Any]:
        """Count one call that ran; the sums, for the caller to add its costs."""
        self._changed = True
        tool = pl["tool"]
        self._counts[tool] = self._counts.get(tool, 0) + 1
        recent, tools = self._recent, self._recent_tools
        recent.append(at)
        tools.append(tool)
        if len(recent) > 2 * RATE_WINDOW:
            del recent[:-RATE_WINDOW]
            del tools[:-RATE_WINDOW]
        sums = self._sums
        sums["output_bytes"] += pl["output_bytes"]
        if tool == "shell":
            sums["shell_cpu_s"] += pl["cpu_s"]
            sums["shell_wall_s"] += pl["duration_s"]
        return sums

    def completed(self, pl: Fields, e: Fields) -> None:
        self._ran(pl, e["occurred_at"])["bytes_written"] += pl["bytes_written"]

    def failed(self, pl: Fields, e: Fields) -> None:
        self._ran(pl, e["occurred_at"])["tool_failures"] += 1

    def responded(self, pl: Fields, e: Fields) -> None:
        self._changed = True
        sums = self._sums
        sums["tokens_in"] += pl["input_tokens"]
        sums["tokens_out"] += pl["output_tokens"]
        sums["tokens_cached"] += pl["cached_tokens"] or 0
        sums["model_calls"] += 1

    def result(self) -> QuotaUsage:
        if not self._changed:
            return self._start
        values = {
            **self._sums,
            "tool_calls": tuple(sorted(self._counts.items())),
            "recent_calls": tuple(map(timestamp, self._recent[-RATE_WINDOW:])),
            "recent_tools": tuple(self._recent_tools[-RATE_WINDOW:]),
        }
        quota: QuotaUsage = construct_trusted(QuotaUsage, values)
        return quota


ON: dict[str, Handler] = {
    "ToolCallCompleted": QuotaFold.completed,
    "ToolCallFailed": QuotaFold.failed,
    "ModelResponded": QuotaFold.responded,
}

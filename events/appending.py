"""What the store's append paths share: one stream's append (`events.store`)
and several streams' in one transaction (`events.group_commit`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from events.envelope import NewEvent

INSERT_CHUNK = 1000  # rows per INSERT: 9 parameters each, well under both drivers' limits

Batch = Sequence[NewEvent]

# Observers of appends: fn(stream_id, events_stored, seconds), called after each
# append that returned (an idempotent hit stores 0). orchestrator.ops.metrics
# registers one; events/ itself knows no metrics library.
APPEND_HOOKS: list[Callable[[str, int, float], None]] = []


class Reconnect(Exception):
    """The writer connection was dead before anything was written."""

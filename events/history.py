"""A session's whole history, read on demand from its stream.

The state a worker keeps and snapshots is the live part
(`events.projections.window`); what it drops is in the events. Readers that
show or reason over the whole history (`audit replay`, the API, `watch`,
the agent's prompt, the diagnosis) fold it here: every event from seq 1,
with no snapshot, into the full projections, or only the types they need.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from events.projections import Folder, Projections
from events.store import EventStore
from events.upcast import current

# What the permission ledger is folded from (and the session's id).
LEDGER_TYPES = frozenset(
    (
        "SessionStarted",
        "ToolCallRequested",
        "PermissionDecided",
        "ConfirmationGranted",
        "ConfirmationDenied",
    )
)


def history(
    store: EventStore,
    stream_id: str,
    types: Collection[str] | None = None,
    *,
    upto: int | None = None,
) -> Projections:
    """The full projections of a stream, from its events alone (up to seq
    `upto`, to match a state read earlier); with `types`, of those events
    only (the rest move `last_seq` only), for a reader that needs part of
    it: the patch is FileChanged, ToolCallCompleted and ToolCallFailed."""
    f = Folder()
    loads = store.loads
    for _, body, _ in store.raw_stream(stream_id):
        r = current(loads(body))
        if upto is not None and r["seq"] > upto:
            break
        if types is None or r["type"] in types:
            f.add(r["type"], r["payload"], r)
        else:
            f.last_seq = r["seq"]
    return f.result()


def replay_json(state: Projections) -> dict[str, Any]:
    """The JSON of `audit replay --json` and the API, changed paths sorted (a
    frozenset dumps in hash order, which differs from process to process:
    sorted, the same store replays to the same bytes)."""
    data: dict[str, Any] = state.model_dump(mode="json")
    data["session"]["changed_paths"].sort()
    return data

"""A session's whole history, read on demand from its stream.

The state a worker keeps and snapshots is the live part
(`events.projections.window`); what it drops is in the events. Readers that
show or reason over the whole history (`audit replay`, the API, `watch`,
the agent's prompt, the diagnosis) fold it here: every event from seq 1,
with no snapshot, into the full projections, or only the types they need.
"""

from __future__ import annotations

from collections.abc import Collection
from itertools import chain
from typing import Any

from events.audit import collector_paused
from events.projections import Projections, fold_records
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
    rows = store.raw_stream(stream_id)
    if upto is not None:
        rows = rows[:upto]  # a stream's seqs are gapless from 1: row n is seq n
    loads = store.loads
    if types is None:
        with collector_paused(promote=True):
            return fold_records(current(loads(body)) for _, body, _ in rows)
    # A stored body is canonical JSON (no spaces), so an event of a type holds
    # its `"type":"T"`; one that holds it elsewhere (a payload's own "type"
    # key) is parsed and dropped by the exact check. The rest are not parsed.
    marks = [f'"type":"{t}"'.encode() for t in types]
    records = (
        r
        for r in (current(loads(b)) for _, b, _ in rows if any(m in b for m in marks))
        if r["type"] in types
    )
    end = [{"type": "", "payload": {}, "seq": len(rows)}] if rows else []  # no handler reads ""
    with collector_paused(promote=True):
        return fold_records(chain(records, end))


def replay_json(state: Projections) -> dict[str, Any]:
    """The JSON of `audit replay --json` and the API, changed paths sorted (a
    frozenset dumps in hash order, which differs from process to process:
    sorted, the same store replays to the same bytes)."""
    data: dict[str, Any] = state.model_dump(mode="json")
    data["session"]["changed_paths"].sort()
    return data

"""A session's whole history, read on demand from its stream.

The state a worker keeps and snapshots is the live part
(`events.projections.window`); what it drops is in the events. Readers that
show or reason over the whole history (`audit replay`, the API, `watch`,
the agent's prompt, the diagnosis) fold it here: every event from seq 1,
with no snapshot, into the full projections, or only the types they need.
Rows come straight from the driver's cursor (`events.reader`: plain tuples
in small batches, the stream's index giving their order; on PostgreSQL the
server sends the next while this one folds), and the fold runs with the
cyclic collector paused (`events.audit`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from itertools import chain
from operator import itemgetter
from typing import Any

from events import reader
from events.audit import collector_paused
from events.projections import Projections, fold_records
from events.store import EventStore, SqlEventStore
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
    with collector_paused(promote=True):
        if types is None and isinstance(store, SqlEventStore):
            # Every event, as one chain of C iterators (no generator frame
            # per event): the bodies alone (each holds its seq), decoded,
            # brought to today's version, folded.
            batches = reader.stream_batches(
                store.engine, store.url, stream_id, upto, columns="body"
            )
            bodies = map(itemgetter(0), chain.from_iterable(batches))
            return fold_records(map(store.body_loads(), bodies), stored=True)
        return fold_records(_records(_bodies(store, stream_id, upto), store.loads, types))


def _bodies(store: EventStore, stream_id: str, upto: int | None) -> Iterable[list[Any]]:
    """Batches of (seq, body) in seq order."""
    if isinstance(store, SqlEventStore):
        return reader.stream_batches(store.engine, store.url, stream_id, upto)
    rows = store.raw_stream(stream_id)
    if upto is not None:
        rows = rows[:upto]  # a stream's seqs are gapless from 1: row n is seq n
    return [[(seq, body) for seq, (_, body, _) in enumerate(rows, start=1)]]


def _records(
    batches: Iterable[list[Any]],
    loads: Callable[[bytes], dict[str, Any]],
    types: Collection[str] | None,
) -> Iterator[dict[str, Any]]:
    """The stored bodies as records at today's schema version; with `types`,
    only theirs, then one that no handler reads at the last seq (so the fold
    ends there, as a fold of every event would)."""
    if types is None:
        for batch in batches:
            for _, body in batch:
                yield current(loads(body))
        return
    # A stored body is canonical JSON (no spaces), so an event of a type holds
    # its `"type":"T"`; one that holds it elsewhere (a payload's own "type"
    # key) is parsed and dropped by the exact check. The rest are not parsed.
    marks = [f'"type":"{t}"'.encode() for t in types]
    last = 0
    for batch in batches:
        for seq, body in batch:
            last = seq
            if any(m in body for m in marks):
                r = current(loads(body))
                if r["type"] in types:
                    yield r
    if last:
        yield {"type": "", "payload": {}, "seq": last}  # no handler reads ""


def replay_json(state: Projections) -> dict[str, Any]:
    """The JSON of `audit replay --json` and the API, changed paths sorted (a
    frozenset dumps in hash order, which differs from process to process:
    sorted, the same store replays to the same bytes)."""
    data: dict[str, Any] = state.model_dump(mode="json")
    data["session"]["changed_paths"].sort()
    return data

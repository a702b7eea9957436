"""Rebuilding projections from a stream, with snapshots so a long session
reads the snapshot plus the tail. Snapshots are derived data: a snapshot of
an older projection version is ignored and rebuilt, never trusted over events."""

from __future__ import annotations

from events.projections import Projections, fold
from events.store import SqlEventStore

# Bump when a projection model changes shape: older snapshots are then ignored.
SNAPSHOT_VERSION = 1
SNAPSHOT_EVERY = 200


def replay(store: SqlEventStore, stream_id: str, *, use_snapshot: bool = True) -> Projections:
    """State, quota usage and permission ledger of one stream, from its events."""
    state, after = Projections(), 0
    snap = store.load_snapshot(stream_id) if use_snapshot else None
    if snap is not None and snap[1] == SNAPSHOT_VERSION:
        state, after = Projections.model_validate_json(snap[2]), snap[0]
    return fold(store.read_stream(stream_id, after), state)


def load(store: SqlEventStore, stream_id: str) -> Projections:
    """`replay`, then refresh the snapshot when the tail has grown long."""
    snap = store.load_snapshot(stream_id)
    state = replay(store, stream_id)
    base = snap[0] if snap is not None and snap[1] == SNAPSHOT_VERSION else 0
    if state.last_seq - base >= SNAPSHOT_EVERY:
        store.save_snapshot(stream_id, state.last_seq, SNAPSHOT_VERSION,
                            state.model_dump_json().encode())
    return state

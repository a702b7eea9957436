"""Rebuilding projections from a stream, with snapshots so a long session
reads the snapshot plus the tail. Snapshots are derived data: a snapshot of
an older projection version is ignored and rebuilt, never trusted over events.

Replay reads stored bodies as plain JSON data (`events.upcast.current`) and
folds them with a `Folder`: no `Event` model is built per event. `audit`
does the same for a whole store in one pass over its rows, verifying every
chain on the way (`events.audit`).
"""

from __future__ import annotations

from events.audit import Audit, collector_paused, whole_store
from events.projections import JobState, Projections, apply_job, fold_records
from events.store import EventStore, SqlEventStore

# Bump when a projection model changes shape: older snapshots are then ignored.
# 6: snapshots hold the live part only (events.projections.window).
SNAPSHOT_VERSION = 6
SNAPSHOT_EVERY = 200


def replay(store: EventStore, stream_id: str, *, use_snapshot: bool = True) -> Projections:
    """The live part of one stream's state, quota usage and permission ledger
    (`Projections.live()`), from its snapshot and the events after it. Its
    whole history is `events.history.history`."""
    return _replay(store, stream_id, _snapshot(store, stream_id) if use_snapshot else None)


def _snapshot(store: EventStore, stream_id: str) -> Projections | None:
    """The stream's snapshot, if one of this version holds a live state (a
    full state is never trusted as one: it is rebuilt)."""
    snap = store.load_snapshot(stream_id)
    if snap is None or snap[1] != SNAPSHOT_VERSION:
        return None
    saved = Projections.model_validate_json(snap[2])
    return saved if saved.is_live and saved.last_seq == snap[0] else None


def _replay(store: EventStore, stream_id: str, start: Projections | None) -> Projections:
    state = start if start is not None else Projections.live()
    loads, rows = store.loads, store.raw_stream(stream_id, state.last_seq)
    with collector_paused():
        return fold_records((loads(body) for _, body, _ in rows), state, stored=True)


def load(store: EventStore, stream_id: str) -> Projections:
    """`replay`, then refresh the snapshot when the tail has grown long."""
    start = _snapshot(store, stream_id)
    state = _replay(store, stream_id, start)
    base = start.last_seq if start is not None else 0
    if state.last_seq - base >= SNAPSHOT_EVERY:
        store.save_snapshot(
            stream_id, state.last_seq, SNAPSHOT_VERSION, state.model_dump_json().encode()
        )
    return state


def job_state(store: EventStore, job_id: str) -> JobState:
    """A job's own state (its sessions, status), from its stream."""
    return job_state_at(store, job_id)[0]


def job_state_at(store: EventStore, job_id: str) -> tuple[JobState, int]:
    """The job's state and the seq it was read up to (to append after it)."""
    state, seq = JobState(), 0
    for e in store.read_stream(job_id):
        state, seq = apply_job(state, e), e.seq
    return state, seq


# -- the whole store -------------------------------------------------------------


def audit(store: SqlEventStore, processes: int | None = None) -> Audit:
    """Every chain of the store verified and every stream's projections, from
    one read of each row (`events.audit.whole_store`): what `audit verify`
    reports, plus the projections."""
    return whole_store(store.engine, store.url, processes=processes)

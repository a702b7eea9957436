"""Rebuilding projections from a stream, with snapshots so a long session
reads the snapshot plus the tail. Snapshots are derived data: a snapshot of
an older projection version is ignored and rebuilt, never trusted over events.

Replay reads stored bodies as plain JSON data (`events.upcast.current`) and
folds them with a `Folder`: no `Event` model is built per event. `audit`
does the same for a whole store in one pass over its rows, verifying every
chain on the way.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pydantic import ValidationError

from events.errors import UnknownEvent
from events.projections import Folder, JobState, Projections, apply_job, fold_records
from events.store import EventStore
from events.upcast import current
from events.verify import Problem, Row, Verifier, VerifyReport

# Bump when a projection model changes shape: older snapshots are then ignored.
SNAPSHOT_VERSION = 5
SNAPSHOT_EVERY = 200


def replay(store: EventStore, stream_id: str, *, use_snapshot: bool = True) -> Projections:
    """State, quota usage and permission ledger of one stream, from its events."""
    state, after = Projections(), 0
    snap = store.load_snapshot(stream_id) if use_snapshot else None
    if snap is not None and snap[1] == SNAPSHOT_VERSION:
        state, after = Projections.model_validate_json(snap[2]), snap[0]
    loads = store.loads
    return fold_records(
        (current(loads(body)) for _, body, _ in store.raw_stream(stream_id, after)), state
    )


def load(store: EventStore, stream_id: str) -> Projections:
    """`replay`, then refresh the snapshot when the tail has grown long."""
    snap = store.load_snapshot(stream_id)
    state = replay(store, stream_id)
    base = snap[0] if snap is not None and snap[1] == SNAPSHOT_VERSION else 0
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


@dataclass
class Audit:
    """Every chain verified, and the projections of every stream that verified.
    A stream with a problem has no projections: its state cannot be trusted."""

    report: VerifyReport
    projections: dict[str, Projections] = field(default_factory=dict)


def audit_rows(rows: Iterable[Row]) -> Audit:
    """Verify and fold rows in position order, parsing each body once.

    Equal to `verify_rows` over the same rows plus `replay` of each stream that
    verifies (a body that verifies but does not fit its model is one more
    problem, "undecodable", which `verify_rows` does not look for)."""
    v = Verifier()
    folders: dict[str, Folder] = {}
    broken: set[str] = set()
    for row in rows:
        sid = row.stream_id
        body = v.add(row)
        if sid in broken:
            continue
        if body is None:
            broken.add(sid)
            folders.pop(sid, None)
            continue
        f = folders.get(sid)
        if f is None:
            f = folders[sid] = Folder()
        try:
            r = current(body)
            f.add(r["type"], r["payload"], r)
        except (UnknownEvent, ValidationError, KeyError, TypeError, ValueError) as exc:
            v.report.problems.append(
                Problem(
                    "undecodable",
                    sid,
                    row.seq,
                    row.position,
                    f"the event does not fit its type's model: {exc}".splitlines()[0],
                )
            )
            broken.add(sid)
            del folders[sid]
    return Audit(v.report, {sid: f.result() for sid, f in folders.items()})


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a whole-store fold: folding creates
    no cyclic garbage, but the growing heap of projections makes every automatic
    collection walk more of it (audits ran 1.2-1.6x faster with it off). Left
    as it was found, so a caller that turned it off keeps it off."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def audit(store: EventStore) -> Audit:
    """`audit_rows` over the whole store: what `audit verify` reports, plus every
    stream's projections, from one read of each row."""
    with collector_paused():
        return audit_rows(store.rows())

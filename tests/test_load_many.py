"""`Runner.load_many` (a chunk's first step reads its new streams in one
query) gives each session exactly the state `load` gives: new streams, short
ones, a long one that has a snapshot, and sessions the runner already holds.
Both backends."""

from __future__ import annotations

from events.replay import SNAPSHOT_EVERY
from events.store import SqlEventStore
from orchestrator.run.runner import Runner
from tests.factories import new, session_payloads, step_payloads


def test_load_many_equals_load_for_new_short_long_and_held_sessions(store: SqlEventStore):
    short = session_payloads(3)[:-1]  # running: started, three steps
    long = session_payloads(60)[:-1]  # past SNAPSHOT_EVERY: `load` leaves a snapshot
    assert len(long) >= SNAPSHOT_EVERY
    store.append("s-short", [new(x, i) for i, x in enumerate(short)], 0)
    store.append("s-long", [new(x, i) for i, x in enumerate(long)], 0)
    store.append("s-held", [new(x, i) for i, x in enumerate(short)], 0)
    Runner(store, "worker:seed").load("s-long")  # writes the snapshot
    assert store.load_snapshot("s-long") is not None
    ids = ["s-new", "s-short", "s-long", "s-held", "s-new-2"]

    runner = Runner(store, "worker:a")
    runner.load("s-held")  # held by this runner: read by its tail, as before
    store.append("s-held", [new(x, 100 + i) for i, x in enumerate(step_payloads(4))], None)
    got = runner.load_many([(sid, "job-1") for sid in ids])

    assert list(got) == ids
    for sid in ids:
        assert got[sid] == Runner(store, "worker:ref").load(sid), sid
    # What it read is held now: the next read of each is its tail only.
    store.append("s-short", [new(x, 200 + i) for i, x in enumerate(step_payloads(4))], None)
    assert runner.load("s-short") == Runner(store, "worker:ref").load("s-short")

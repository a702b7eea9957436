"""The store contract, run on SQLite and PostgreSQL alike."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext

from events import migrate
from events import payloads as p
from events.db import store_errors
from events.envelope import canonical_json, chain_hash
from events.errors import AppendOnlyViolation, SchemaNotReady, SequenceConflict, UnknownEvent
from events.replay import SNAPSHOT_VERSION, load, replay
from events.store import SqlEventStore, open_store
from events.verify import verify_rows
from tests.factories import new, session_payloads


def test_append_numbers_events_from_one_and_chains_them(store: SqlEventStore, stream_id: str):
    stored = store.append(stream_id, [new(x, i) for i, x in enumerate(session_payloads(2))], 0)
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    assert [e.prev_hash for e in stored[1:]] == [e.hash for e in stored[:-1]]
    assert list(store.read_stream(stream_id)) == stored
    assert verify_rows(store.rows(stream_id)).ok


def test_read_tails_gives_each_streams_tail_as_read_stream_does(store, stream_id):
    job = stream_id + "-job"
    store.append(stream_id, [new(x, i) for i, x in enumerate(session_payloads(2))], 0)
    store.append(job, [new(p.SessionCompleted(files_changed=n)) for n in range(3)], 0)
    tails = [(stream_id, 2), (job, 0), (job, 3), (stream_id + "-none", 0)]
    assert store.read_tails(tails) == [list(store.read_stream(s, after)) for s, after in tails]
    assert [len(t) for t in store.read_tails(tails)][1:] == [3, 0, 0]
    assert store.read_tails([]) == []


def test_stale_expected_seq_is_a_typed_conflict_and_appends_nothing(store, stream_id):
    store.append(stream_id, [new(p.SessionCompleted(files_changed=0))], 0)
    with pytest.raises(SequenceConflict) as info:
        store.append(stream_id, [new(p.SessionCompleted(files_changed=1))], 0)
    assert (info.value.expected_seq, info.value.actual_seq) == (0, 1)
    assert "Reload the stream" in str(info.value)
    assert store.last_seq(stream_id) == 1


def test_repeated_idempotency_key_returns_the_stored_events(store, stream_id):
    first = store.append(
        stream_id,
        [
            new(p.SessionCompleted(files_changed=0), key="k"),
            new(p.SessionCompleted(files_changed=1), key="k"),
        ],
        0,
    )
    again = store.append(
        stream_id,
        [
            new(p.SessionCompleted(files_changed=0), key="k"),
            new(p.SessionCompleted(files_changed=1), key="k"),
        ],
        0,
    )
    assert again == first
    assert store.last_seq(stream_id) == 2


def test_database_refuses_update_and_delete_of_events(store, stream_id):
    store.append(stream_id, [new(p.SessionCompleted(files_changed=0))], 0)
    for sql in ("UPDATE events SET seq = 7", "DELETE FROM events"):
        with pytest.raises(AppendOnlyViolation, match="append-only"):
            with store_errors(store.url), store.engine.begin() as conn:
                conn.exec_driver_sql(sql)
    assert store.last_seq(stream_id) == 1


def test_unknown_event_type_on_read_is_a_clear_error(store, stream_id):
    envelope = {
        "stream_id": stream_id,
        "seq": 1,
        "event_id": "0" * 36,
        "type": "FromTheFuture",
        "schema_version": 1,
        "occurred_at": "2026-01-01T00:00:00.000000Z",
        "actor": "x",
        "correlation_id": "j",
        "causation_id": None,
        "idempotency_key": None,
        "payload": {"type": "FromTheFuture"},
        "prev_hash": "0",
    }
    body = canonical_json(envelope)
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO events (stream_id, seq, event_id, type, correlation_id,"
                " prev_hash, hash, body) VALUES (:s, 1, :e, 'FromTheFuture', 'j',"
                " '0', :h, :b)"
            ),
            {"s": stream_id, "e": "0" * 35 + stream_id[-1], "h": chain_hash("0", body), "b": body},
        )
    with pytest.raises(UnknownEvent, match="FromTheFuture"):
        list(store.read_stream(stream_id))


def test_unmigrated_store_refuses_to_start_and_names_the_command(tmp_path: Path):
    with pytest.raises(SchemaNotReady, match="orchestrator db upgrade"):
        SqlEventStore(str(tmp_path / "new.sqlite"))


def test_newer_schema_than_known_is_refused(tmp_path: Path):
    s = open_store(str(tmp_path / "e.sqlite"), upgrade=True)
    with s.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaNotReady, match="9999"):
        SqlEventStore(str(tmp_path / "e.sqlite"))


def test_the_start_up_check_knows_the_head_alembic_finds(tmp_path: Path):
    """`migrate.check` compares with `HEAD` and reads the version table itself
    (no Alembic at start-up): both must agree with Alembic's own answers."""
    assert migrate.head_revision() == migrate.HEAD
    s = open_store(str(tmp_path / "e.sqlite"), upgrade=True)
    try:
        with s.engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == migrate.HEAD
        assert migrate.current_revision(s.engine) == migrate.HEAD
    finally:
        s.close()
    assert (
        migrate.current_revision(sa.create_engine(f"sqlite:///{tmp_path / 'empty.sqlite'}")) is None
    )


def test_replay_from_snapshot_equals_replay_from_scratch(store, stream_id):
    from events import replay as replay_mod

    payloads = session_payloads(40)
    store.append(stream_id, [new(x, i) for i, x in enumerate(payloads[:150])], 0)
    old = replay_mod.SNAPSHOT_EVERY
    replay_mod.SNAPSHOT_EVERY = 50
    try:
        load(store, stream_id)  # writes a snapshot at seq 150
    finally:
        replay_mod.SNAPSHOT_EVERY = old
    snap = store.load_snapshot(stream_id)
    assert snap is not None and snap[:2] == (150, SNAPSHOT_VERSION)
    store.append(stream_id, [new(x, i) for i, x in enumerate(payloads[150:])], 150)
    assert replay(store, stream_id) == replay(store, stream_id, use_snapshot=False)


def _race(
    url: str, stream_id: str, worker: int, rounds: int, barrier: Any, q: mp.Queue[tuple[int, int]]
) -> None:
    """Every round, all workers read the head, then all append after it: exactly
    one wins and the others get a typed conflict (no timing luck involved)."""
    store = SqlEventStore(url)
    won = lost = 0
    for _ in range(rounds):
        barrier.wait()
        seq = store.last_seq(stream_id)
        barrier.wait()
        try:
            store.append(stream_id, [new(p.SessionCompleted(files_changed=worker))], seq)
            won += 1
        except SequenceConflict:
            lost += 1
    q.put((won, lost))


def test_processes_racing_on_one_stream_leave_it_gapless_and_unforked(store, stream_id):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    workers, rounds = 4, 25
    barrier = ctx.Barrier(workers, timeout=120)
    procs = [
        ctx.Process(target=_race, args=(store.url, stream_id, w, rounds, barrier, q))
        for w in range(workers)
    ]
    for proc in procs:
        proc.start()
    results = [q.get(timeout=180) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    events = list(store.read_stream(stream_id))
    assert [e.seq for e in events] == list(range(1, rounds + 1))
    assert sum(won for won, _ in results) == rounds
    assert sum(lost for _, lost in results) == rounds * (workers - 1)  # typed conflicts
    assert verify_rows(store.rows(stream_id)).ok


@pytest.mark.postgres
def test_a_redelivery_that_loses_the_insert_race_returns_the_winners_events(pg_url, stream_id):
    """Two deliveries of one batch: the second reads the head before the first
    commits, then its INSERT hits UNIQUE(stream_id, seq). It must get the
    stored events back (same key), not an error."""
    import threading

    import psycopg

    from events.envelope import genesis_hash, seal

    store = SqlEventStore(pg_url)
    mine = [new(p.SessionCompleted(files_changed=1), key="step:1:end")]
    theirs = [new(p.SessionCompleted(files_changed=1), key="step:1:end")]
    [(seq, body, digest)] = seal(stream_id, theirs, 0, genesis_hash(stream_id))
    other = psycopg.connect(pg_url)  # the first delivery, mid-transaction
    other.execute(
        "INSERT INTO events (stream_id, seq, event_id, type, correlation_id, idempotency_key,"
        " prev_hash, hash, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            stream_id,
            seq,
            theirs[0].event_id,
            theirs[0].type,
            theirs[0].correlation_id,
            "step:1:end",
            genesis_hash(stream_id),
            digest,
            body,
        ),
    )
    result: list[object] = []
    racer = threading.Thread(target=lambda: result.append(store.append(stream_id, mine, 0)))
    racer.start()
    racer.join(timeout=1.0)
    assert racer.is_alive()  # blocked on the uncommitted row's seq
    other.commit()
    racer.join(timeout=30)
    other.close()
    [stored] = result[0]  # type: ignore[misc]
    assert stored.event_id == theirs[0].event_id
    assert [e.event_id for e in store.read_stream(stream_id)] == [theirs[0].event_id]
    store.close()

"""The one-statement append after a remembered head (events.heads): a head
that is wrong in any way costs a round trip, never a wrong row, a gap, a
broken chain or a second copy of a keyed batch. And 0004 (no unique event_id,
a partial type index) and 0005 (an idempotency index of keyed rows only)
upgrade a store with events in place, keeping its rows, its triggers and
its keys. Both backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from events import migrate
from events import payloads as p
from events.db import store_errors
from events.envelope import genesis_hash, seal
from events.errors import AppendOnlyViolation, SequenceConflict
from events.store import SqlEventStore, open_store
from events.verify import verify_rows
from tests.conftest import fresh_pg_database
from tests.factories import new


def done(n: int, key: str | None = None) -> object:
    return new(p.SessionCompleted(files_changed=n), key=key)


def test_a_second_writer_moving_the_head_makes_the_first_reread_not_conflict(
    store: SqlEventStore, stream_id: str
):
    other = SqlEventStore(store.url)  # another process's store: its own remembered heads
    store.append(stream_id, [done(1)], 0)  # `store` now remembers seq 1
    other.append(stream_id, [done(2), done(3)], None)
    stored = store.append(stream_id, [done(4, "k4")], None)  # remembered head is stale
    assert [e.seq for e in stored] == [4]
    assert stored[0].prev_hash == list(store.read_stream(stream_id))[2].hash
    assert other.append(stream_id, [done(5)], 4)[0].prev_hash == stored[0].hash
    with pytest.raises(SequenceConflict) as info:
        store.append(stream_id, [done(6)], 4)  # the caller is behind: a real conflict
    assert (info.value.expected_seq, info.value.actual_seq) == (4, 5)
    assert verify_rows(store.rows(stream_id)).ok
    other.close()


def test_a_remembered_head_the_stream_does_not_have_inserts_nothing(
    store: SqlEventStore, stream_id: str
):
    """A stream shorter than remembered (say, restored from a backup): the
    guard finds no row at the remembered seq with that hash, so nothing is
    placed after it; the reading path appends where the stream really ends."""
    store.append(stream_id, [done(1)], 0)
    store._heads.put(stream_id, 7, "0" * 64)
    [stored] = store.append(stream_id, [done(2, "k2")], None)
    assert stored.seq == 2
    store._heads.put(stream_id, 2, "0" * 64)  # right seq, wrong hash
    [stored] = store.append(stream_id, [done(3)], 2)
    assert stored.seq == 3 and stored.prev_hash == list(store.read_stream(stream_id))[1].hash
    store._heads.put(stream_id, 7, "0" * 64)
    with pytest.raises(SequenceConflict):
        store.append(stream_id, [done(4)], 7)
    assert [e.seq for e in store.read_stream(stream_id)] == [1, 2, 3]
    assert verify_rows(store.rows(stream_id)).ok


def test_a_key_stored_by_another_writer_returns_its_events_through_a_known_head(
    store: SqlEventStore, stream_id: str
):
    other = SqlEventStore(store.url)
    store.append(stream_id, [done(1)], 0)
    theirs = other.append(stream_id, [done(2, "step:2"), done(3, "step:2")], 1)
    # `store` remembers seq 1: its guarded INSERT finds the key and inserts nothing.
    again = store.append(stream_id, [done(2, "step:2"), done(3, "step:2")], 1)
    assert again == theirs
    assert store.last_seq(stream_id) == 3
    # And with the head it knows right, the key check still holds.
    assert store.append(stream_id, [done(2, "step:2")], None) == theirs
    assert store.last_seq(stream_id) == 3
    other.close()


def test_a_new_stream_at_expected_zero_needs_no_head_and_still_conflicts(
    store: SqlEventStore, stream_id: str
):
    other = SqlEventStore(store.url)
    other.append(stream_id, [done(1)], 0)
    with pytest.raises(SequenceConflict) as info:
        store.append(stream_id, [done(1)], 0)
    assert info.value.actual_seq == 1
    other.close()


def test_an_unkeyed_append_at_the_end_reads_the_head(store: SqlEventStore, stream_id: str):
    """Neither key nor expected seq: nothing would stop a retry after a link
    lost mid-INSERT from storing a second copy, so it takes the reading path."""
    store.append(stream_id, [done(1)], 0)
    assert store._known_head(stream_id, None, 1, None) is None
    assert store._known_head(stream_id, None, 1, "k") == store._heads.get(stream_id)
    assert [e.seq for e in store.append(stream_id, [done(2)], None)] == [2]


def test_the_head_memory_is_bounded(store: SqlEventStore):
    store._heads.size = 3
    for i in range(10):
        store.append(f"s-bound-{i}", [done(i)], 0)
    assert len(store._heads._heads) == 3
    assert store._heads.get("s-bound-9") is not None
    assert store._heads.get("s-bound-0") is None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def own_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.sqlite'}"
        return
    with fresh_pg_database("orch_test_heads", migrate=False) as url:
        yield url


def test_0004_upgrades_a_store_with_events_keeping_rows_and_triggers(own_url: str):
    old = SqlEventStore(own_url, check_schema=False)
    with old.engine.begin() as conn:
        cfg = migrate._config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
    before = old.append("s-old", [done(i, "k") for i in range(3)], 0)
    old.close()
    store = open_store(own_url, upgrade=True)
    assert migrate.current_revision(store.engine) == migrate.HEAD
    assert list(store.read_stream("s-old")) == before
    assert verify_rows(store.rows("s-old")).ok
    assert store.append("s-old", [done(9, "k")], None) == before  # the key survived
    [after] = store.append("s-old", [done(4)], 3)
    assert after.position > before[-1].position
    inspector = sa.inspect(store.engine)
    uniques = inspector.get_unique_constraints("events")
    assert [u["column_names"] for u in uniques] == [["stream_id", "seq"]]
    [types] = [i for i in inspector.get_indexes("events") if i["name"] == "ix_events_type_position"]
    options = types["dialect_options"]
    where = options.get("sqlite_where", options.get("postgresql_where"))
    assert "ConfirmationGranted" in str(getattr(where, "text", where))  # partial: rare types
    for sql in ("UPDATE events SET seq = 7", "DELETE FROM events"):
        with pytest.raises(AppendOnlyViolation):
            with store_errors(store.url), store.engine.begin() as conn:
                conn.exec_driver_sql(sql)
    store.close()


def test_read_types_callers_ask_only_for_types_the_partial_index_holds():
    from events.schema import INDEXED_TYPES
    from orchestrator.run.confirmations import CONFIRMATION_TYPES

    assert set(CONFIRMATION_TYPES) | {"JobSubmitted", "JobCompleted"} <= set(INDEXED_TYPES)


def test_read_types_reads_indexed_types_through_the_partial_index_and_others_too(
    own_url: str,
):
    store = open_store(own_url, upgrade=True)
    store.append("s-t", [new(p.TurnStarted(turn=1, name="x", kind="shell")), done(1)], 0)
    store.append("s-u", [new(p.ConfirmationGranted(call_id="c", by="user:ops"))], 0)
    assert [e.type for e in store.read_types(["ConfirmationGranted"])] == ["ConfirmationGranted"]
    assert [e.stream_id for e in store.read_types(["TurnStarted"])] == ["s-t"]
    assert [e.type for e in store.read_types(["SessionCompleted", "ConfirmationGranted"])] == [
        "SessionCompleted",
        "ConfirmationGranted",
    ]
    if own_url.startswith("sqlite"):
        from events.schema import INDEXED_TYPES_SQL

        sql = (
            "EXPLAIN QUERY PLAN SELECT position FROM events WHERE position > 0"
            " AND type IN ('ConfirmationGranted') AND " + INDEXED_TYPES_SQL.text
        )
        with store.engine.connect() as conn:
            plan = " ".join(r[-1] for r in conn.exec_driver_sql(sql))
        assert "ix_events_type_position" in plan
    store.close()


def _keys_column(store: SqlEventStore, stream_id: str) -> list[str | None]:
    with store.engine.connect() as conn:
        sql = "SELECT idempotency_key FROM events WHERE stream_id = :s ORDER BY seq"
        return list(conn.execute(sa.text(sql), {"s": stream_id}).scalars())


def _append_keyed_on_every_row(store: SqlEventStore, stream_id: str, batch: list) -> None:
    """Store a keyed batch as revisions before 0005 did: the key on every row."""
    key = batch[0].idempotency_key
    sealed = seal(stream_id, batch, 0, genesis_hash(stream_id))
    params = list(store._inserts.params(stream_id, batch, sealed, key, genesis_hash(stream_id)))
    if store._inserts.arrays:
        params[5] = [key] * len(batch)
    else:
        params[5::9] = [key] * len(batch)
    conn = store._fresh_connection()
    cur = conn.cursor()
    cur.execute(store._inserts.sql(len(batch)), tuple(params))
    cur.fetchall()
    if not store._inserts.arrays:
        conn.commit()
    cur.close()


def test_0005_keys_on_every_row_and_on_a_batch_edges_both_return_the_whole_batch(own_url: str):
    old = SqlEventStore(own_url, check_schema=False)
    with old.engine.begin() as conn:
        cfg = migrate._config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
    _append_keyed_on_every_row(old, "s-old", [done(i, "k") for i in range(4)])
    before = list(old.read_stream("s-old"))
    old.close()
    store = open_store(own_url, upgrade=True)
    assert _keys_column(store, "s-old") == ["k"] * 4
    assert store.append("s-old", [done(9, "k")], None) == before  # head read: a hit
    assert store.append("s-old", [done(9, "k")], None) == before  # head known: a hit
    assert store._by_key("s-old", "k") == before  # the lost-race path
    stored = store.append("s-old", [done(i, "k2") for i in range(5)], 4)
    assert _keys_column(store, "s-old")[4:] == ["k2", None, None, None, "k2"]
    store._heads.clear()
    assert store.append("s-old", [done(9, "k2")], 4) == stored
    assert store._by_key("s-old", "k2") == stored
    [one] = store.append("s-old", [done(1, "k3")], None)
    assert store.append("s-old", [done(9, "k3")], None) == [one]
    assert verify_rows(store.rows("s-old")).ok
    [idem] = [
        i
        for i in sa.inspect(store.engine).get_indexes("events")
        if i["name"] == "ix_events_idempotency"
    ]
    where = idem["dialect_options"].get(
        "sqlite_where", idem["dialect_options"].get("postgresql_where")
    )
    assert "IS NOT NULL" in str(getattr(where, "text", where))
    if own_url.startswith("sqlite"):
        guard = (
            "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM events"
            " WHERE stream_id = ? AND idempotency_key = ?)"
        )
        for sql, params in ((guard, ("s", "k")), (store._sql_key_rows, ("s", "s", "k", "s", "k"))):
            with store.engine.connect() as conn:
                plan = [r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
            # The key's terms imply the partial index's; min/max seq do not walk the stream.
            keyed = [step for step in plan if "idempotency_key=?" in step]
            assert keyed and all("ix_events_idempotency" in step for step in keyed), plan
    store.close()

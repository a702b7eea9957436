"""The fast whole-store audit (events.reader, Verifier.add_many, events.audit)
finds exactly what the row-by-row verifier finds, and folds exactly what
replay folds: in one process and split over processes by ranges of streams."""

from __future__ import annotations

import gc
import os
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from events import reader
from events.audit import (
    audit_batches,
    chain_heads,
    collector_paused,
    verify_store,
    whole_store,
)
from events.envelope import canonical_json, chain_hash, genesis_hash
from events.history import history
from events.store import SqlEventStore
from events.verify import Row, Verifier, verify_rows
from tests.factories import new, place, session_payloads


def _rows() -> list[tuple]:
    """Three interleaved streams as stored rows (position, stream, seq, prev, hash, body)."""
    streams = [place(f"s{i}", session_payloads(2)) for i in range(3)]
    merged = [e for group in zip(*streams) for e in group]
    out = []
    for position, e in enumerate(merged, start=1):
        record = e.model_dump(mode="json")
        del record["position"], record["hash"]
        out.append((position, e.stream_id, e.seq, e.prev_hash, e.hash, canonical_json(record)))
    return out


def _by_add(rows: list[tuple]):
    return verify_rows(Row(*r) for r in rows)


def _by_add_many(rows: list[tuple], size: int):
    v = Verifier()
    for i in range(0, len(rows), size):
        v.add_many(rows[i : i + size])
    return v.report


def test_batches_of_sound_rows_verify_and_return_every_body():
    rows = _rows()
    v = Verifier()
    sound = v.add_many(rows)
    assert v.report == _by_add(rows) and v.report.ok
    by_stream: dict[str, list] = {}
    for r in rows:
        by_stream.setdefault(r[1], []).append(orjson.loads(r[5]))
    assert sound == by_stream


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_tampering_is_reported_as_the_row_by_row_verifier_reports_it(data):
    rows = _rows()
    i = data.draw(st.integers(0, len(rows) - 1))
    how = data.draw(st.sampled_from(["byte", "delete", "swap", "resplice", "seq", "prev"]))
    position, sid, seq, prev, digest, body = rows[i]
    if how == "byte":
        j = data.draw(st.integers(0, len(body) - 1))
        body = body[:j] + bytes([(body[j] + 1) % 256]) + body[j + 1 :]
        rows[i] = (position, sid, seq, prev, digest, body)
    elif how == "delete":
        del rows[i]
    elif how == "swap" and i + 1 < len(rows):
        rows[i], rows[i + 1] = rows[i + 1], rows[i]
    elif how == "resplice":  # the row moved to another stream's column
        rows[i] = (position, "s9", seq, prev, digest, body)
    elif how == "seq":
        rows[i] = (position, sid, seq + 1, prev, digest, body)
    elif how == "prev":
        rows[i] = (position, sid, seq, "0" * 64, digest, body)
    size = data.draw(st.integers(1, len(rows)))
    assert _by_add_many(rows, size) == _by_add(rows)


@pytest.mark.parametrize(
    "body",
    [b"[1,2]", b'"text"', b"7", b'{"seq":1}', b'{"prev_hash":null,"seq":1,"stream_id":"s0"}'],
)
def test_a_hashed_body_that_is_no_envelope_is_reported_as_row_by_row(body):
    """Valid JSON under a valid hash, but not a dict or without an envelope's
    keys: the batch check hands it to the row-by-row checks."""
    prev = genesis_hash("s0")
    rows = [(1, "s0", 1, prev, chain_hash(prev, body), body)]
    assert _by_add_many(rows, 1) == _by_add(rows)


def test_an_old_schema_version_is_upcast_and_folded_not_reported():
    """A body written at an older schema version (ToolCallStarted v1, before
    trace ids) takes the slow path and verifies."""
    rows = [r for r in _rows() if r[1] == "s0"]
    prev, out = genesis_hash("s0"), []
    for position, sid, seq, _, _, body in rows:
        record = orjson.loads(body)
        record["prev_hash"] = prev
        if record["type"] == "ToolCallStarted":
            record["schema_version"] = 1
            del record["payload"]["trace_id"]
        body = canonical_json(record)
        digest = chain_hash(prev, body)
        out.append((position, sid, seq, prev, digest, body))
        prev = digest
    assert _by_add_many(out, 3) == _by_add(out) and _by_add(out).ok
    a = audit_batches([out])
    assert a.report.ok and a.projections["s0"].session.calls


def _tamper(store, stream: str, seq: int, body: bytes) -> None:
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS events_no_update")
        else:
            conn.exec_driver_sql("ALTER TABLE events DISABLE TRIGGER events_no_update_delete")
        conn.execute(
            sa.text("UPDATE events SET body = :b WHERE stream_id = :s AND seq = :q"),
            {"b": body, "s": stream, "q": seq},
        )
        if store.engine.dialect.name != "sqlite":
            conn.exec_driver_sql("ALTER TABLE events ENABLE TRIGGER events_no_update_delete")


def _fill(store) -> list[str]:
    streams = [f"stream-{i:02d}" for i in range(8)]
    seqs = dict.fromkeys(streams, 0)
    for turn in range(1, 4):  # interleaved, as live sessions write
        for sid in streams:
            payloads = (
                session_payloads(2)
                if turn == 1
                else [p for p in session_payloads(2)[1:-1] if p.type != "SessionStarted"]
            )
            store.append(sid, [new(x, i) for i, x in enumerate(payloads)], seqs[sid])
            seqs[sid] += len(payloads)
    return streams


def _split_over_processes(url: str, tmp: str):
    """The two-process audits, run in a spawned interpreter: no thread another
    test left in this one, so `whole_store` really forks (it refuses to fork a
    process running threads). Temporary files go to `tmp`, and what is left
    there after both is returned too. Half the projections are read here
    (from the file the other process wrote), half stay undecoded when `two`
    is pickled back."""
    tempfile.tempdir = tmp
    store = SqlEventStore(url)
    try:
        threads = threading.active_count()
        two = whole_store(store.engine, store.url, processes=2, min_events=0)
        verify_only = whole_store(store.engine, store.url, fold=False, processes=2, min_events=0)
        for sid in list(two.projections)[::2]:
            two.projections[sid]
        return threads, two, verify_only, os.listdir(tmp)
    finally:
        store.close()


def _split_without_a_temporary_folder(url: str):
    """A two-process audit where no temporary folder can be made (a missing
    `TMPDIR`; a full disk fails the same way): the projections come back
    through the pool's pipe."""
    tempfile.tempdir = "/nonexistent/orchestrator-test-tmp"
    store = SqlEventStore(url)
    try:
        return threading.active_count(), whole_store(
            store.engine, store.url, processes=2, min_events=0
        )
    finally:
        store.close()


def test_an_audit_without_a_temporary_folder_is_slower_not_lost(own_store):
    store = own_store
    _fill(store)
    one = whole_store(store.engine, store.url, processes=1)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        threads, two = pool.submit(_split_without_a_temporary_folder, store.url).result()
    assert threads == 1
    assert two.report == one.report and two.report.ok
    assert dict(two.projections) == dict(one.projections)


def _empty(d):
    d.mkdir()
    return d


def test_a_store_split_over_processes_audits_as_one_pass(own_store, tmp_path):
    store = own_store
    streams = _fill(store)
    _tamper(store, streams[2], 4, b'{"forged": true}')
    _tamper(store, streams[6], 2, b"not json")
    parts = reader.parts(reader.stream_sizes(store.engine, store.url), 2)
    assert len(parts) == 2
    one = whole_store(store.engine, store.url, processes=1)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        threads, two, verify_only, left = pool.submit(
            _split_over_processes, store.url, str(_empty(tmp_path / "tmp"))
        ).result()
    assert threads == 1  # so the split really forked
    assert left == []  # the other process's projections came in a file, now gone
    expected = verify_rows(store.rows())
    assert one.report == two.report == expected
    assert [(p.kind, p.stream_id) for p in expected.problems] == [
        ("hash_mismatch", streams[2]),
        ("hash_mismatch", streams[6]),
    ]
    assert set(two.projections) == set(streams) - {streams[2], streams[6]}
    assert one.projections == two.projections
    assert two.projections == {
        sid: history(store, sid)
        for sid in two.projections  # the whole of each
    }
    assert verify_only.report == expected and not verify_only.projections
    assert verify_store(store) == expected
    assert verify_store(store, streams[2]) == verify_rows(store.rows(streams[2]))
    assert list(chain_heads(store, streams[1])) == [
        (r.stream_id, r.seq, r.hash) for r in store.rows(streams[1])
    ]


def test_audit_batches_of_rows_report_undecodable_events_in_row_order(own_store):
    store = own_store
    streams = _fill(store)
    rows = [r for b in reader.row_batches(store.engine, store.url) for r in b]
    a = audit_batches([rows[i : i + 7] for i in range(0, len(rows), 7)])
    assert a.report.ok and set(a.projections) == set(streams)


def test_parts_cover_every_stream_once_with_about_equal_events():
    sizes = [(f"s{i:03d}", 10 + (i % 7)) for i in range(100)]
    parts = reader.parts(sizes, 3)
    assert parts[0][0] is None and parts[-1][1] is None
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    totals = [
        sum(n for s, n in sizes if (lo is None or s >= lo) and (hi is None or s < hi))
        for lo, hi in parts
    ]
    assert sum(totals) == sum(n for _, n in sizes)
    assert max(totals) - min(totals) <= 2 * 16
    assert reader.parts(sizes[:1], 2) == [(None, None)]
    assert reader.parts([], 4) == [(None, None)]


def test_the_first_part_holds_lead_times_the_events_of_each_other():
    sizes = [(f"s{i:04d}", 10 + (i % 7)) for i in range(1000)]
    parts = reader.parts(sizes, 2, lead=1.5)
    assert parts[0][0] is None and parts[-1][1] is None and parts[0][1] == parts[1][0]
    first = sum(n for s, n in sizes if s < parts[0][1])
    rest = sum(n for _, n in sizes) - first
    assert abs(first / rest - 1.5) < 0.01


def test_overlapping_pauses_leave_the_collector_as_the_first_found_it():
    """Two folds at once (two API requests) each pause the collector: it stays
    off until the last one ends, then is on again, not left off for good."""
    assert gc.isenabled()
    first, second = collector_paused(), collector_paused(promote=True)
    first.__enter__()
    second.__enter__()
    assert not gc.isenabled()
    first.__exit__(None, None, None)
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        with collector_paused(promote=True):
            pass
        assert not gc.isenabled()  # a caller that turned it off keeps it off
    finally:
        gc.enable()


def test_a_promoting_pause_keeps_the_callers_frozen_objects_frozen():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with collector_paused(promote=True):
            kept = [{"n": i} for i in range(1000)]
        assert gc.get_freeze_count() == frozen and len(kept) == 1000
    finally:
        gc.unfreeze()


def test_a_read_stopped_after_its_first_batch_leaves_no_reader_behind(own_store):
    """Leaving a whole-store read early (a caller that found what it wanted)
    ends its read-ahead thread and frees the connection for the next read."""
    store = own_store
    streams = _fill(store)
    rows = list(reader.row_batches(store.engine, store.url, batch=1000))
    before = threading.active_count()
    batches = reader.row_batches(store.engine, store.url, batch=5)
    first = next(batches)
    batches.close()
    assert threading.active_count() == before
    assert first == rows[0][:5]
    assert [r for b in reader.row_batches(store.engine, store.url, batch=7) for r in b] == rows[0]
    assert {r[1] for r in rows[0]} == set(streams)


def test_an_error_in_the_read_ahead_reaches_the_reader_after_the_batches_before_it():
    batches = iter([[1, 2], [3]])

    def fetch() -> list:
        for b in batches:
            return b
        raise OSError("connection lost")

    got = []
    with pytest.raises(OSError, match="connection lost"):
        for b in reader._read_ahead(fetch):
            got.append(b)
    assert got == [[1, 2], [3]]


def _chained(sid: str, records: list[dict]) -> list[tuple]:
    """(stream, seq, type, prev, hash, body) of `records` (envelopes without
    hash or position) chained as the store chains them, whatever they hold."""
    prev, out = genesis_hash(sid), []
    for seq, record in enumerate(records, start=1):
        record = {**record, "stream_id": sid, "seq": seq, "prev_hash": prev}
        body = canonical_json(record)
        digest = chain_hash(prev, body)
        out.append((sid, seq, record["type"], prev, digest, body))
        prev = digest
    return out


def _mixed_log() -> list[tuple]:
    """Five sessions, interleaved as live sessions write: m0 has an event of an
    older schema version (upcast, folded), m1 one of a type this code does not
    know (chained and canonical: `unknown_event`), m2 a payload with a field
    missing (sound chain, does not fit its model: `undecodable`), m3 a byte
    altered after writing (`hash_mismatch`), m4 nothing wrong."""
    records = {}
    for i in range(5):
        evs = place(f"m{i}", session_payloads(3))
        records[f"m{i}"] = [
            {k: v for k, v in e.model_dump(mode="json").items() if k not in ("position", "hash")}
            for e in evs
        ]
    started = next(r for r in records["m0"] if r["type"] == "ToolCallStarted")
    started["schema_version"] = 1
    del started["payload"]["trace_id"]
    records["m1"][4] = {**records["m1"][4], "type": "Mystery", "schema_version": 1}
    turn = next(r for r in records["m2"] if r["type"] == "TurnStarted")
    del turn["payload"]["kind"]
    streams = [_chained(sid, recs) for sid, recs in records.items()]
    sid, seq, type_, prev, digest, body = streams[3][5]
    streams[3][5] = (sid, seq, type_, prev, digest, body.replace(b'"seq":6', b'"seq":7'))
    return [row for group in zip(*streams) for row in group]


def _insert(store, rows: list[tuple]) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO events (stream_id, seq, event_id, type, correlation_id, "
                "idempotency_key, prev_hash, hash, body) VALUES "
                "(:s, :q, :e, :t, 'job-1', NULL, :p, :h, :b)"
            ),
            [
                {"s": s, "q": q, "e": f"{s}-{q}", "t": t, "p": p, "h": h, "b": b}
                for s, q, t, p, h, b in rows
            ],
        )


def test_a_mixed_log_is_audited_exactly_as_verify_then_replay_would(own_store, tmp_path):
    """Old versions are upcast and folded; an unknown type, a payload that does
    not fit its model and an altered byte are each reported at their row, in
    row order; only the sound streams have projections, equal to replay's."""
    store = own_store
    _insert(store, _mixed_log())
    rows = list(store.rows())
    expected = verify_rows(rows)
    assert [(p.kind, p.stream_id) for p in expected.problems] == [
        ("unknown_event", "m1"),
        ("hash_mismatch", "m3"),
    ]
    raw = [tuple(r) for r in rows]
    for size in (1, 7, len(raw)):
        a = audit_batches([raw[i : i + size] for i in range(0, len(raw), size)])
        kinds = [(p.kind, p.stream_id, p.seq) for p in a.report.problems]
        assert kinds == [
            ("undecodable", "m2", 2),
            ("unknown_event", "m1", 5),
            ("hash_mismatch", "m3", 6),
        ]
        assert "does not fit its type's model" in a.report.problems[0].detail
        assert a.report.events == expected.events and a.report.heads == expected.heads
        assert set(a.projections) == {"m0", "m4"}
        assert a.projections == {s: history(store, s) for s in ("m0", "m4")}
        assert a.projections["m0"].session.calls[0].status in ("completed", "failed")
    one = whole_store(store.engine, store.url, processes=1)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        threads, two, verify_only, left = pool.submit(
            _split_over_processes, store.url, str(_empty(tmp_path / "tmp"))
        ).result()
    assert threads == 1 and left == []
    assert one.report == two.report == a.report
    assert dict(one.projections) == dict(two.projections) == a.projections
    assert verify_only.report == expected

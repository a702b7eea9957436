"""`audit verify` catches tampering: any single-byte change, deletion, reorder,
or cross-stream splice of stored or exported events."""

from __future__ import annotations

import io

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from events.verify import export_lines, verify_jsonl, verify_rows
from tests.factories import new, place, session_payloads


def exported() -> bytes:
    """Two interleaved streams of one job, exported as the CLI does."""
    a = place("stream-a", session_payloads(2))
    b = place("stream-b", session_payloads(2))
    merged = [e for pair in zip(a, b) for e in pair] + a[len(b) :] + b[len(a) :]
    rows = [(i, _body(e), e.hash) for i, e in enumerate(merged, start=1)]
    return b"".join(export_lines(rows))


def _body(e) -> bytes:
    from events.envelope import canonical_json

    record = e.model_dump(mode="json")
    del record["position"], record["hash"]
    return canonical_json(record)


def check(data: bytes):
    return verify_jsonl(io.BytesIO(data))


def test_an_untouched_export_verifies():
    report = check(exported())
    assert report.ok, report.problems
    assert (report.events, report.streams) == (2 * len(session_payloads(2)), 2)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_single_byte_change_is_caught(data):
    original = exported()
    i = data.draw(st.integers(0, len(original) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != original[i]))
    assert not check(original[:i] + bytes([value]) + original[i + 1 :]).ok


def test_the_manifest_line_and_line_ends_are_checked_too():
    """The last byte of an export (the manifest line's end) and any line's
    end are part of what is verified (found by hypothesis: a space for the
    final newline went through)."""
    original = exported()
    for end in (b" ", b"\r", b"\t"):
        assert not check(original[:-1] + end).ok, end
    first = original.index(b"\n")
    assert not check(original[:first] + b"\r" + original[first + 1 :]).ok
    assert check(original.replace(b"\n", b"\r\n")).ok  # a CRLF copy of the whole file


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_deleting_any_line_is_caught(data):
    lines = exported().splitlines(keepends=True)
    i = data.draw(st.integers(0, len(lines) - 1))
    assert not check(b"".join(lines[:i] + lines[i + 1 :])).ok


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_swapping_any_two_lines_is_caught(data):
    lines = exported().splitlines(keepends=True)
    i = data.draw(st.integers(0, len(lines) - 2))
    j = data.draw(st.integers(i + 1, len(lines) - 1))
    lines[i], lines[j] = lines[j], lines[i]
    assert not check(b"".join(lines)).ok


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_splicing_an_event_into_another_stream_is_caught(data):
    lines = exported().splitlines(keepends=True)
    events = [orjson.loads(x) for x in lines[:-1]]
    i = data.draw(st.integers(0, len(events) - 1))
    victim = events[i]
    other = "stream-b" if victim["stream_id"] == "stream-a" else "stream-a"
    donor = data.draw(st.sampled_from([e for e in events if e["stream_id"] == other]))
    spliced = {**donor, "position": victim["position"]}
    lines[i] = orjson.dumps(spliced, option=orjson.OPT_SORT_KEYS) + b"\n"
    report = check(b"".join(lines))
    assert not report.ok
    assert any(pr.stream_id in ("stream-a", "stream-b", "*") for pr in report.problems)


def test_problems_say_what_is_wrong_and_where():
    lines = exported().splitlines(keepends=True)
    del lines[2]  # stream-a seq 2
    problems = [str(pr) for pr in check(b"".join(lines)).problems]
    assert problems[0] == (
        "stream stream-a seq 3 (position 5): seq_gap: expected seq 2 after 1, "
        "found 3: events are missing, duplicated or out of order"
    )


def test_an_export_without_manifest_is_reported_as_truncated():
    lines = exported().splitlines(keepends=True)[:-1]
    assert [pr.kind for pr in check(b"".join(lines)).problems] == ["truncated"]


def test_stored_rows_with_a_tampered_body_are_caught(store, stream_id):
    import sqlalchemy as sa

    store.append(stream_id, [new(x) for x in session_payloads(1)], 0)
    with store.engine.begin() as conn:  # a privileged attacker drops the trigger
        if store.engine.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER events_no_update")
        else:
            conn.exec_driver_sql("ALTER TABLE events DISABLE TRIGGER events_no_update_delete")
        conn.execute(
            sa.text("UPDATE events SET body = :b WHERE stream_id = :s AND seq = 2"),
            {"b": b'{"forged": true}', "s": stream_id},
        )
        if store.engine.dialect.name != "sqlite":
            conn.exec_driver_sql("ALTER TABLE events ENABLE TRIGGER events_no_update_delete")
    report = verify_rows(store.rows(stream_id))
    assert [(pr.kind, pr.seq) for pr in report.problems] == [("hash_mismatch", 2)]


def test_auditing_a_store_equals_verifying_it_and_replaying_each_stream(store, stream_id):
    """`audit` reads each row once; it must agree with the slow paths: the verify
    report, per-stream replay, and folding the decoded events. (The PostgreSQL
    store is shared with other tests: look at this test's streams only.)"""
    import sqlalchemy as sa

    from events.history import history
    from events.projections import fold
    from events.replay import audit

    streams = [f"{stream_id}-{i}" for i in range(3)]
    seqs = dict.fromkeys(streams, 0)
    for turn in range(1, 4):  # interleaved, as live sessions write
        for sid in streams:
            payloads = (
                session_payloads(3)
                if turn == 1
                else [p for p in session_payloads(3)[1:-1] if p.type != "SessionStarted"]
            )
            store.append(sid, [new(x, i) for i, x in enumerate(payloads)], seqs[sid])
            seqs[sid] += len(payloads)
    result = audit(store)
    assert result.report == verify_rows(store.rows())
    assert not [pr for pr in result.report.problems if pr.stream_id in streams]
    mine = {sid: result.projections[sid] for sid in streams}
    assert mine == {sid: history(store, sid) for sid in streams}
    assert mine == {sid: fold(store.read_stream(sid)) for sid in streams}

    with store.engine.begin() as conn:  # tamper with one stream
        if store.engine.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER events_no_update")
        else:
            conn.exec_driver_sql("ALTER TABLE events DISABLE TRIGGER events_no_update_delete")
        conn.execute(
            sa.text("UPDATE events SET body = :b WHERE stream_id = :s AND seq = 5"),
            {"b": b'{"forged": true}', "s": streams[1]},
        )
        if store.engine.dialect.name != "sqlite":
            conn.exec_driver_sql("ALTER TABLE events ENABLE TRIGGER events_no_update_delete")
    tampered = audit(store)
    assert tampered.report == verify_rows(store.rows())
    assert [
        (pr.kind, pr.stream_id, pr.seq)
        for pr in tampered.report.problems
        if pr.stream_id in streams
    ] == [("hash_mismatch", streams[1], 5)]
    assert [sid for sid in streams if sid in tampered.projections] == [streams[0], streams[2]]

"""Signed digests catch what the hash chain alone cannot: someone with
database access who edits an event and recomputes every hash after it, or
cuts off a stream's tail. Tampering here is done the way an attacker would:
straight SQL with the append-only triggers switched off, on real SQLite and
PostgreSQL databases of the test's own."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from events import digests
from events import payloads as p
from events.digests import DIGEST_STREAM
from events.envelope import NewEvent, canonical_json, chain_hash, genesis_hash
from events.store import SqlEventStore
from events.verify import verify_rows
from orchestrator.audit import digests as audit


def new(payload: object) -> NewEvent:
    return NewEvent.create(payload, actor="user:test", correlation_id="job-1")


def turns(n: int) -> list[NewEvent]:
    return [new(p.TurnStarted(turn=i, name=f"step {i}", kind="shell")) for i in range(1, n + 1)]


KEY = digests.load_private(digests.generate_key()[0])


# -- pure -------------------------------------------------------------------------------


def test_a_digest_proves_exactly_the_heads_it_signed():
    heads = {"s1": (3, "a" * 64), "s2": (1, "b" * 64)}
    d = digests.sign(KEY, heads, position=4)
    hashes = {("s1", 3): "a" * 64, ("s2", 1): "b" * 64}
    report = digests.check([d], [KEY.public_key()], hashes, heads)
    assert report.ok and report.unproven == {}
    grown = {**heads, "s1": (5, "c" * 64), "s3": (2, "d" * 64)}
    report = digests.check([d], [KEY.public_key()], hashes, grown)
    assert report.ok and report.unproven == {"s1": (3, 5), "s3": (0, 2)}


def test_forged_edited_and_foreign_digests_are_reported():
    heads = {"s1": (3, "a" * 64)}
    d = digests.sign(KEY, heads, position=4)
    edited = d.model_copy(update={"heads": (p.StreamHead(stream_id="s1", seq=3, hash="f" * 64),)})
    other = digests.load_private(digests.generate_key()[0])
    foreign = digests.sign(other, heads, position=4)
    report = digests.check([edited, foreign], [KEY.public_key()], {("s1", 3): "a" * 64}, heads)
    assert [x.kind for x in report.problems] == ["bad_signature", "untrusted_key"]
    assert report.unproven == {"s1": (0, 3)}  # nothing valid proves s1


# -- against real databases ---------------------------------------------------------------


def _tamper(store: SqlEventStore, *statements: tuple[str, dict]) -> None:
    """Run SQL with the append-only triggers out of the way, as an attacker would."""
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER events_no_update")
            conn.exec_driver_sql("DROP TRIGGER events_no_delete")
        else:
            conn.exec_driver_sql("ALTER TABLE events DISABLE TRIGGER USER")
        for sql, params in statements:
            conn.execute(sa.text(sql), params)


def _recompute(store: SqlEventStore, stream_id: str, edit_seq: int) -> list[tuple[str, dict]]:
    """UPDATEs that change event `edit_seq` and re-chain every later hash."""
    rows = list(store.rows(stream_id))
    prev = genesis_hash(stream_id)
    out = []
    for r in rows:
        import orjson

        body = orjson.loads(r.body)
        if r.seq == edit_seq:
            body["payload"]["name"] = "rm -rf / (history rewritten)"
        body["prev_hash"] = prev
        data = canonical_json(body)
        digest = chain_hash(prev, data)
        out.append(
            (
                "UPDATE events SET body = :b, prev_hash = :p, hash = :h "
                "WHERE stream_id = :s AND seq = :q",
                {"b": data, "p": prev, "h": digest, "s": stream_id, "q": r.seq},
            )
        )
        prev = digest
    return out


def test_a_recomputed_chain_verifies_but_the_signed_digest_catches_it(own_store):
    sid = f"s-{uuid.uuid4().hex}"
    own_store.append(sid, turns(6), 0)
    audit.sign(own_store, KEY, "user:auditor")
    trusted = [KEY.public_key()]
    assert audit.prove_store(own_store, trusted).ok
    _tamper(own_store, *_recompute(own_store, sid, edit_seq=2))
    assert verify_rows(own_store.rows()).ok  # the chain alone is fooled
    report = audit.prove_store(own_store, trusted)
    assert [(x.kind, x.stream_id, x.seq) for x in report.problems] == [("digest_mismatch", sid, 6)]


def test_a_cut_tail_is_caught_as_truncation(own_store):
    sid = f"s-{uuid.uuid4().hex}"
    own_store.append(sid, turns(5), 0)
    audit.sign(own_store, KEY, "user:auditor")
    _tamper(own_store, ("DELETE FROM events WHERE stream_id = :s AND seq > 3", {"s": sid}))
    assert verify_rows(own_store.rows()).ok
    report = audit.prove_store(own_store, [KEY.public_key()])
    assert [(x.kind, x.seq) for x in report.problems] == [("truncated", 5)]


def test_streams_after_the_last_digest_are_unproven_not_ok(own_store):
    a, b = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    own_store.append(a, turns(2), 0)
    audit.sign(own_store, KEY, "user:auditor")
    own_store.append(a, turns(1), 2)
    own_store.append(b, turns(1), 0)
    report = audit.prove_store(own_store, [KEY.public_key()])
    assert report.ok and report.unproven == {a: (2, 3), b: (0, 1)}


def test_digests_kept_outside_the_database_still_prove_after_the_digest_stream_is_cut(
    own_store, tmp_path
):
    sid = f"s-{uuid.uuid4().hex}"
    own_store.append(sid, turns(4), 0)
    event = audit.sign(own_store, KEY, "user:auditor")
    kept = tmp_path / "digests.jsonl"
    import orjson

    kept.write_bytes(orjson.dumps(event.to_record()) + b"\n")
    _tamper(
        own_store,
        *_recompute(own_store, sid, edit_seq=1),
        ("DELETE FROM events WHERE stream_id = :s", {"s": DIGEST_STREAM}),
    )
    assert verify_rows(own_store.rows()).ok
    blind = audit.prove_store(own_store, [KEY.public_key()])
    assert blind.ok and blind.unproven == {sid: (0, 4)}  # unproven, never "ok"
    report = audit.prove_store(own_store, [KEY.public_key()], audit.read_digest_file(kept))
    assert [x.kind for x in report.problems] == ["digest_mismatch"]

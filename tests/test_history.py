"""`events.history.history` (stored bodies as JSON data, read in batches by
`events.reader`, folded by `Folder` with no `Event` built) equals the model
fold (`fold` over `store.read_stream`: each row decoded into an `Event`,
upcast and validated) on real sessions as the store holds them: old schema
versions among today's, and events of types no projection reads. Both
backends, no mocks."""

from __future__ import annotations

import random
import uuid

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import payloads as p
from events import reader
from events.envelope import canonical_json, chain_hash, genesis_hash
from events.errors import UnknownEvent
from events.history import LEDGER_TYPES, history
from events.projections import fold
from orchestrator.run.recording import PatientStore, Spool
from tests.factories import place
from tests.projection_streams import random_session

PATCH_TYPES = frozenset(("FileChanged", "ToolCallCompleted", "ToolCallFailed"))
# Types that no projection reads: they move last_seq only.
UNREAD = (
    p.RateLimited(call_id="c1", tool="fetch", rate="30/minute", retry_after_s=2.0),
    p.ToolCallRetried(call_id="c1", attempt=1, reason="HTTP 503", delay_s=0.5),
    p.SecretAccessed(name="OPENAI_KEY", source="env:ORCH_OPENAI_KEY", reader="provider:openai"),
)


def _records(sid: str, rng: random.Random) -> list[dict[str, object]]:
    """A random session's envelopes as JSON data, with events no projection
    reads spliced in, and about half of its ToolCallStarted and ModelRequested
    written as version 1 (before trace ids: upcast on read)."""
    payloads = random_session(rng)
    for _ in range(rng.randrange(4)):
        payloads.insert(rng.randrange(1, len(payloads) + 1), rng.choice(UNREAD))
    records = []
    for e in place(sid, payloads):
        r = {k: v for k, v in e.model_dump(mode="json").items() if k not in ("position", "hash")}
        if r["type"] in ("ToolCallStarted", "ModelRequested") and rng.random() < 0.5:
            r["schema_version"] = 1
            del r["payload"]["trace_id"]  # type: ignore[attr-defined]
        records.append(r)
    return records


def _insert(store, sid: str, records: list[dict[str, object]]) -> None:
    """The records chained and stored as the store stores them, whatever
    version they claim (the store itself only writes today's)."""
    prev, rows = genesis_hash(sid), []
    for r in records:
        body = canonical_json({**r, "prev_hash": prev})
        digest = chain_hash(prev, body)
        rows.append(
            {"s": sid, "q": r["seq"], "e": r["event_id"], "t": r["type"], "p": prev, "h": digest}
            | {"b": body}
        )
        prev = digest
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO events (stream_id, seq, event_id, type, correlation_id, "
                "idempotency_key, prev_hash, hash, body) VALUES "
                "(:s, :q, :e, :t, 'job-1', NULL, :p, :h, :b)"
            ),
            rows,
        )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.randoms(use_true_random=False), st.data())
def test_history_equals_the_model_fold_of_the_stored_events(store, tmp_path, rng, data):
    sid = f"h-{uuid.uuid4().hex}"
    records = _records(sid, rng)
    _insert(store, sid, records)
    events = list(store.read_stream(sid))  # decoded, upcast and validated: the model path
    assert [e.schema_version for e in events] == [
        p.SCHEMA_VERSIONS[e.type] for e in events
    ]  # every event at today's version once read
    whole = fold(events)
    assert history(store, sid) == whole
    # A worker's store wraps the SQL store (PatientStore): read through the
    # EventStore protocol's raw_stream instead of events.reader.
    assert history(PatientStore(store, Spool(tmp_path / "spool"), 0.0), sid) == whole
    upto = data.draw(st.integers(1, len(events)))
    assert history(store, sid, upto=upto) == fold(events[:upto])
    ledger = history(store, sid, LEDGER_TYPES)
    assert (ledger.ledger, ledger.last_seq) == (whole.ledger, whole.last_seq)
    patch = history(store, sid, PATCH_TYPES).session
    assert (patch.patch, patch.files_changed) == (whole.session.patch, whole.session.files_changed)


def test_upcast_and_unread_events_are_in_the_sessions_used_above():
    """The generated sessions hold what the equivalence is about."""
    rng = random.Random(3)
    seen = [r for _ in range(20) for r in _records("s", rng)]
    assert any(r["schema_version"] == 1 for r in seen)
    assert {type(u).__name__ for u in UNREAD} <= {r["type"] for r in seen}


@pytest.mark.parametrize("types", [None, frozenset({"FromTheFuture"})])
def test_an_event_of_an_unknown_type_is_an_error_as_on_the_model_path(store, types):
    """Never a silent skip: history raises what read_stream raises."""
    sid = f"h-{uuid.uuid4().hex}"
    records = _records(sid, random.Random(1))
    odd = {**records[2], "type": "FromTheFuture", "payload": {"type": "FromTheFuture"}}
    _insert(store, sid, [*records[:2], odd, *records[3:]])
    with pytest.raises(UnknownEvent, match="FromTheFuture"):
        list(store.read_stream(sid))
    with pytest.raises(UnknownEvent, match="FromTheFuture"):
        history(store, sid, types)


def test_a_stream_is_read_in_batches_in_seq_order_and_may_be_left_early(store):
    """`events.reader.stream_batches`, as history reads: the stream's rows in
    seq order however they are batched (up to `upto` too); leaving after
    the first batch (an error in the fold) returns the connection."""
    sid = f"h-{uuid.uuid4().hex}"
    rng = random.Random(5)
    records: list[dict[str, object]] = []
    while len(records) < 40:  # several batches of 7
        records += [{**r, "seq": len(records) + i + 1} for i, r in enumerate(_records(sid, rng))]
    _insert(store, sid, records)
    stored = [(seq, body) for seq, (_, body, _) in enumerate(store.raw_stream(sid), start=1)]
    read = list(reader.stream_batches(store.engine, store.url, sid, batch=7))
    assert [r for b in read for r in b] == stored
    assert {len(b) for b in read[:-1]} == {7}
    upto = [r for b in reader.stream_batches(store.engine, store.url, sid, 20, batch=7) for r in b]
    assert upto == stored[:20]
    batches = reader.stream_batches(store.engine, store.url, sid, batch=7)
    assert next(batches) == stored[:7]
    batches.close()
    assert store.engine.pool.checkedout() == 0

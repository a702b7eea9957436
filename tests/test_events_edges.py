"""Edges of the event layer a user meets: an agent conversation replayed, a
job's progress, bad input refused with a clear message, the store contract at
its edges, and tampered rows reported by verify. No clock and no mocks: the
folds and verify are pure, the store tests use real SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from events import payloads as p
from events.digests import generate_key, load_private, load_public
from events.envelope import canonical_json, chain_hash, format_ts, genesis_hash
from events.errors import StoreUnavailable
from events.projections import JobState, Projections, QuotaUsage, apply, apply_job, fold
from events.store import SqlEventStore
from events.verify import Row, verify_rows
from tests.factories import T0, new, place

# -- an agent conversation, folded both ways --------------------------------


def _agent_session() -> list[object]:
    return [
        p.SessionStarted(job_id="job-1", target="/w", steps=()),
        p.AgentStarted(
            instruction="fix the bug",
            instruction_digest="d" * 64,
            mode="chat",
            provider="scripted",
            model="m1",
            max_turns=5,
            max_invalid_calls=2,
            prompt_version="v1",
            tools=("search",),
        ),
        p.ModelRequested(
            model_turn=1, provider="scripted", model="m1", messages=1, prompt_digest="p" * 64
        ),
        p.ModelResponded(
            model_turn=1,
            model="m1",
            latency_s=0.1,
            finish_reason="tool_calls",
            input_tokens=100,
            output_tokens=20,
            cached_tokens=40,
            content="let me look",
            tool_calls=(
                p.ModelToolCall(id="t1", name="search", arguments="{}", turn=1),
                p.ModelToolCall(id="t2", name="nope", arguments="{", error="unknown tool"),
            ),
        ),
        p.UserMessage(text="also the tests", digest="u" * 64),
        p.ModelRequested(
            model_turn=2, provider="scripted", model="m1", messages=3, prompt_digest="q" * 64
        ),
        p.AgentTurnCancelled(model_turn=2, by="user:ana", reason="Ctrl-C"),
        # The cancelled turn's answer arrives late: recorded, not acted on.
        p.ModelResponded(
            model_turn=2,
            model="m1",
            latency_s=2.0,
            finish_reason="stop",
            input_tokens=7,
            output_tokens=3,
            content="too late",
        ),
        p.ModelRequested(
            model_turn=3, provider="scripted", model="m1", messages=4, prompt_digest="r" * 64
        ),
        p.ModelFailed(model_turn=3, error="ProviderUnavailable", message="503 from upstream"),
    ]


def test_agent_conversation_replays_the_same_event_by_event_and_in_one_fold():
    events = place("sess-1", _agent_session())
    stepwise = Projections()
    for e in events:
        stepwise = apply(stepwise, e)
    folded = fold(events)

    assert folded.session.agent == stepwise.session.agent
    agent = folded.session.agent
    assert agent is not None
    assert [e.role for e in agent.entries] == ["user", "assistant", "user", "cancelled"]
    assert agent.last_reply is not None and agent.last_reply.text == "let me look"
    assert agent.invalid_calls == 1  # the call to the unknown tool
    assert agent.model_turns == 2 and agent.cancelled_turn == 2
    assert agent.failure == "ProviderUnavailable: 503 from upstream"
    assert agent.requested == 3
    assert folded.quota.model_calls == stepwise.quota.model_calls
    assert folded.quota.tokens_cached == 40


def test_agent_without_a_reply_yet_has_no_last_reply_and_stray_events_are_ignored():
    stray = place("sess-2", [p.UserMessage(text="hello?", digest="u" * 64)])
    assert apply(Projections(), stray[0]).session.agent is None  # no AgentStarted yet

    events = place("sess-3", _agent_session()[:2])
    agent = fold(events).session.agent
    assert agent is not None and agent.last_reply is None


def test_unknown_ids_are_none_not_errors():
    s = fold(place("sess-4", [p.SessionStarted(job_id="j", target="/w", steps=("a",))])).session
    assert s.confirmation("c-missing") is None
    assert s.call("c-missing") is None
    assert s.turn(99) is None


# -- a job's own stream -----------------------------------------------------


def test_job_progress_counts_each_session_once_and_keeps_the_first_cancel():
    refs = (p.SessionRef(session_id="s1", target="/a"), p.SessionRef(session_id="s2", target="/b"))
    events = place(
        "job-9",
        [
            p.JobSubmitted(name="nightly", spec={"steps": 1}, sessions=refs),
            p.JobCancelRequested(by="user:ana", reason="wrong branch"),
            p.JobCancelRequested(by="user:bob", reason="later"),
            p.SessionFinished(session_id="s1", status="failed"),
            p.SessionFinished(session_id="s1", status="failed"),  # redelivered
        ],
    )
    job = JobState()
    for e in events:
        job = apply_job(job, e)
    assert job.job_id == "job-9" and job.status == "running"
    assert (job.cancelled_by, job.cancel_reason) == ("user:ana", "wrong branch")
    assert job.finished == (("s1", "failed"),)
    assert not job.all_finished and job.failed == 1

    done = place("job-9", [p.SessionFinished(session_id="s2", status="completed")])[0]
    job = apply_job(job, done)
    assert job.all_finished and job.failed == 1
    assert not JobState().all_finished  # a job with no sessions is not "all finished"


def test_quota_counts_calls_per_tool_and_in_a_window():
    t = [T0 + timedelta(seconds=i) for i in range(3)]
    q = QuotaUsage(tool_calls=(("shell", 2), ("write", 1)), recent_calls=tuple(t))
    assert q.calls_of("shell") == 2 and q.calls_of("search") == 0
    assert q.calls_since(t[1]) == 2
    assert q.calls_since(T0 + timedelta(hours=1)) == 0


# -- bad input, clear messages ----------------------------------------------


def test_naive_timestamp_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="occurred_at must be timezone-aware"):
        format_ts(datetime(2026, 1, 1))
    assert format_ts(datetime(2026, 1, 1, tzinfo=UTC)).startswith("2026-01-01T00:00:00")


def test_store_unavailable_names_the_store_and_what_to_check():
    err = StoreUnavailable("postgresql://orch@db:5432/orch", ConnectionRefusedError("refused"))
    assert err.exit_code == 4 and err.transient
    text = str(err)
    assert "postgresql://orch@db:5432/orch is unavailable: refused" in text
    assert "ORCH_STORE_URL" in text


def test_audit_keys_of_the_wrong_kind_are_refused_with_what_to_do():
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_private = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ec_public = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="must be an Ed25519 private key.*audit keygen"):
        load_private(ec_private)
    with pytest.raises(ValueError, match="must be an Ed25519 public key"):
        load_public(ec_public)
    private, public = generate_key()
    assert (
        load_public(public).public_bytes_raw()
        == load_private(private).public_key().public_bytes_raw()
    )


# -- the store contract at its edges (real SQLite and PostgreSQL) -------------


def test_an_empty_append_stores_nothing(store: SqlEventStore, stream_id: str):
    assert store.append(stream_id, [], 0) == []
    assert list(store.read_stream(stream_id)) == []


def test_one_append_with_two_idempotency_keys_is_refused_and_stores_nothing(
    store: SqlEventStore, stream_id: str
):
    batch = [
        new(p.SessionCompleted(files_changed=0), 0, key="k1"),
        new(p.SessionCompleted(files_changed=1), 1, key="k2"),
    ]
    with pytest.raises(ValueError, match="must share its idempotency key"):
        store.append(stream_id, batch, 0)
    assert list(store.read_stream(stream_id)) == []


def test_read_all_returns_appended_events_in_position_order(store: SqlEventStore, stream_id: str):
    stored = store.append(stream_id, [new(p.SessionCompleted(files_changed=2))], 0)
    after = stored[0].position - 1
    (event,) = [e for e in store.read_all(after) if e.stream_id == stream_id]
    assert event.payload == p.SessionCompleted(files_changed=2) and event.seq == 1


# -- verify: tampered rows ----------------------------------------------------


def _row(stream_id: str, seq: int, body: bytes, prev: str | None = None) -> Row:
    prev = prev if prev is not None else genesis_hash(stream_id)
    return Row(seq, stream_id, seq, prev, chain_hash(prev, body), body)


def _envelope(stream_id: str, seq: int, **extra: object) -> bytes:
    record = {
        "stream_id": stream_id,
        "seq": seq,
        "prev_hash": genesis_hash(stream_id),
        "type": "SessionCompleted",
        "schema_version": 1,
        "payload": {"files_changed": 0},
    }
    record.update(extra)
    return canonical_json(record)


def test_verify_reports_a_body_that_is_not_json():
    report = verify_rows([_row("s", 1, b"{not json")])
    assert not report.ok
    (problem,) = report.problems
    assert problem.kind == "undecodable" and "not JSON" in problem.detail
    assert str(problem).startswith("stream s seq 1 (position 1): undecodable:")


def test_verify_reports_an_event_spliced_in_from_another_stream():
    body = _envelope("other", 1)
    report = verify_rows([_row("s", 1, body)])
    (problem,) = report.problems
    assert problem.kind == "stream_mismatch"
    assert "written as stream other seq 1" in problem.detail

    not_an_object = verify_rows([_row("s", 1, orjson.dumps([1, 2]))])
    assert not_an_object.problems[0].kind == "stream_mismatch"
    assert "written as stream None seq None" in not_an_object.problems[0].detail


def test_verify_reports_an_event_type_this_version_does_not_know():
    body = _envelope("s", 1, type="SessionTeleported", schema_version=3)
    (problem,) = verify_rows([_row("s", 1, body)]).problems
    assert problem.kind == "unknown_event"
    assert "SessionTeleported" in problem.detail

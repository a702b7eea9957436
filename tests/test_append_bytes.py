"""The bytes an append stores are pinned: bodies and hashes computed once and
written down here, so a faster envelope, hash or INSERT cannot change a
stored byte (old logs must keep verifying). Every append path must store
them: one statement after a known head, the head-reading path, a group
commit, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from types import UnionType
from typing import Literal, Union, get_args, get_origin

import pytest

from events import payloads as p
from events.appending import INSERT_CHUNK
from events.envelope import Event, NewEvent, canonical_json, genesis_hash, payload_data, seal
from events.store import SqlEventStore
from events.verify import verify_rows

STREAM = "session-pin"
IST = timezone(timedelta(hours=5, minutes=30))
# A UTC time with microseconds, one without, one in another zone: every shape of occurred_at.
TIMES = (
    datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    datetime(2026, 1, 2, 8, 34, 5, 999999, tzinfo=IST),
)
PAYLOADS = (
    p.SessionStarted(job_id="job-1", target="/w", steps=("a", "b")),
    p.ToolCallRequested(call_id="c1", turn=1, tool="shell", args={"z": [1, 2.5], "a": "ü\n"}),
    p.FileChanged(call_id="c1", path="f.py", before_hash=None, after_hash="b", diff="+x\n"),
    p.ToolCallCompleted(call_id="c1", tool="shell", duration_s=0.1, cpu_s=1e-7, output="ok"),
    p.SessionCompleted(files_changed=1),
)
FIRST_BODY = (
    b'{"actor":"runner","causation_id":"cause-0","correlation_id":"job-pin",'
    b'"event_id":"0190f0e0-0000-7000-8000-000000000000","idempotency_key":"step:1",'
    b'"occurred_at":"2026-01-02T03:04:05.000006Z","payload":{"job_id":"job-1",'
    b'"policy":"default-allow","steps":["a","b"],"target":"/w","type":"SessionStarted"},'
    b'"prev_hash":"5b897d950b3136c852de84d4928a6ab8328c2f5a9b902cdac55a181415f5392d",'
    b'"schema_version":1,"seq":1,"stream_id":"session-pin","type":"SessionStarted"}'
)
HASHES = (
    "367f3634bd496d4187bfe5928f1b2c7fae682cc668099e0cc9931f74b8634f33",
    "8db7b33b0b58f713b79e3234785684a37d977dda62f7c7a9e75f1f6a6a0f9575",
    "385187693e7a7f6dc2c95941d7763012585a898bdeb9670999b79c937bb9a52a",
    "0e7f049f2ef0d2920a6e6d84182e7cf9a7139f8f372638c3927b37836ae9f842",
    "88bbdcc33dad851b069ac73c4465039d8f065e434bdcd24f304ddeee231f14b2",
)
ALL_BODIES_SHA256 = "e60f0d3d667f7d2e3f485ad2f82ca2bb5d35dd08662cfeaeaa59f1ef921992c8"
# The same events without an idempotency key (each single append is then a new one).
UNKEYED_HASHES = (
    "26f59e0353ed252d14274f554271a2b06ac8aff08478660b0b808cbb0b3db336",
    "86032dee2395b4168db0da9503dd71854ea742926256e6d67ce350b85fc07afa",
    "4ca1aaa99766830fca219eaf75a8ebc49e3645b0935e80b59d8f306088a0ed3d",
    "31c9f445a9b31bda81ef5e9732e1fa2fe8ddad6fda78a619db11ec511ced91a3",
    "eccdbf104d37d9175afe2ff120c3b2cbd7e0ae5e4339b07b35b2cd9ab4c85a72",
)
UNKEYED_BODIES_SHA256 = "ef1aabdecd1d45f128670009c2e9252228790c01f7464bb4efaeab3684676246"


def pinned_events(key: str | None = "step:1") -> list[NewEvent]:
    return [
        NewEvent(
            payload=pl,
            event_id=f"0190f0e0-0000-7000-8000-{i:012d}",
            occurred_at=TIMES[i % 3] + timedelta(seconds=i),
            actor="runner",
            correlation_id="job-pin",
            causation_id=None if i % 2 else f"cause-{i}",
            idempotency_key=key,
        )
        for i, pl in enumerate(PAYLOADS)
    ]


def _bodies_digest(bodies: list[bytes]) -> str:
    return hashlib.sha256(b"".join(bodies)).hexdigest()


def test_sealing_gives_the_pinned_bodies_and_hashes():
    sealed = seal(STREAM, pinned_events(), 0, genesis_hash(STREAM))
    assert sealed[0][1] == FIRST_BODY
    assert tuple(h for _, _, h in sealed) == HASHES
    assert _bodies_digest([b for _, b, _ in sealed]) == ALL_BODIES_SHA256
    unkeyed = seal(STREAM, pinned_events(None), 0, genesis_hash(STREAM))
    assert tuple(h for _, _, h in unkeyed) == UNKEYED_HASHES
    assert _bodies_digest([b for _, b, _ in unkeyed]) == UNKEYED_BODIES_SHA256


# Each path: (how it appends, keyed?). One key covers one append, so the
# paths that append the events in several calls store them unkeyed.


def _one_batch(store: SqlEventStore) -> list[Event]:
    return store.append(STREAM, pinned_events(), 0)


def _one_batch_head_read(store: SqlEventStore) -> list[Event]:
    store._heads.clear()  # no head known: the path that reads it
    return store.append(STREAM, pinned_events(), None)


def _one_at_a_time(store: SqlEventStore) -> list[Event]:
    evs = pinned_events(None)
    return [e for i, ev in enumerate(evs) for e in store.append(STREAM, [ev], i)]


def _one_at_a_time_head_read(store: SqlEventStore) -> list[Event]:
    out = []
    for i, ev in enumerate(pinned_events(None)):
        store._heads.clear()  # as a worker that did not write the stream: reads the head
        out += store.append(STREAM, [ev], i)
    return out


def _group_commit(store: SqlEventStore) -> list[Event]:
    evs = pinned_events(None)
    done = store.append_many([(STREAM, evs[:2], 0), ("other", evs[:1], 0), (STREAM, evs[2:], 2)])
    return done[0] + done[2]


@pytest.mark.parametrize(
    ("path", "keyed"),
    [
        (_one_batch, True),
        (_one_batch_head_read, True),
        (_one_at_a_time, False),
        (_one_at_a_time_head_read, False),
        (_group_commit, False),
    ],
)
def test_every_append_path_stores_the_pinned_bytes(own_store: SqlEventStore, path, keyed):
    hashes, digest = (
        (HASHES, ALL_BODIES_SHA256) if keyed else (UNKEYED_HASHES, UNKEYED_BODIES_SHA256)
    )
    stored = path(own_store)
    rows = own_store.raw_stream(STREAM)
    assert tuple(h for _, _, h in rows) == tuple(e.hash for e in stored) == hashes
    assert _bodies_digest([b for _, b, _ in rows]) == digest
    assert [e.position for e in stored] == [pos for pos, _, _ in rows]
    assert list(own_store.read_stream(STREAM)) == stored
    if keyed:
        assert rows[0][1] == FIRST_BODY
        # A retry returns what is stored and writes nothing, head known or not.
        assert own_store.append(STREAM, pinned_events(), None) == stored
        own_store._heads.clear()
        assert own_store.append(STREAM, pinned_events(), 0) == stored
        assert own_store.raw_stream(STREAM) == rows


def test_a_batch_bigger_than_one_sqlite_insert_is_stored_in_order(own_store: SqlEventStore):
    # SQLite splits it into INSERTs of INSERT_CHUNK rows; PostgreSQL sends one array each column.
    n = INSERT_CHUNK + 7
    batch = [
        NewEvent(
            payload=p.TurnStarted(turn=i, name=f"s{i}", kind="shell"),
            event_id=f"0190f0e0-0000-7000-8000-{i:012d}",
            occurred_at=TIMES[0] + timedelta(milliseconds=i),
            actor="runner",
            correlation_id="job-pin",
            idempotency_key="big",
        )
        for i in range(n)
    ]
    stored = own_store.append(STREAM, batch, 0)
    assert [e.seq for e in stored] == list(range(1, n + 1))
    assert [e.position for e in stored] == sorted(e.position for e in stored)
    sealed = seal(STREAM, batch, 0, genesis_hash(STREAM))
    assert own_store.raw_stream(STREAM) == [
        (e.position, body, digest) for e, (_, body, digest) in zip(stored, sealed)
    ]
    assert verify_rows(own_store.rows(STREAM)).ok


def _sample(annotation: object) -> object:
    """A valid value of a payload field's type, with text that needs escaping."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return args[-1]
    if origin is Union or origin is UnionType:
        return _sample(args[0])
    if origin in (tuple, list):
        return [_sample(args[0])]
    if origin is dict:
        return {"b\u00fc": _sample(args[1]), "a": _sample(args[1])}
    if isinstance(annotation, type) and issubclass(annotation, p._Payload):
        return {k: _sample(f.annotation) for k, f in annotation.model_fields.items()}
    samples: dict[object, object] = {str: 't\u00fc\n"x"', int: -3, float: 0.1, bool: True}
    return samples.get(annotation, "z")


def test_payload_data_is_the_payloads_json_mode_dump_for_every_type():
    for name, cls in p.PAYLOAD_TYPES.items():
        payload = cls.model_validate(
            {k: _sample(f.annotation) for k, f in cls.model_fields.items()}
        )
        dumped = payload.model_dump(mode="json")
        assert canonical_json(payload_data(payload)) == canonical_json(dumped), name

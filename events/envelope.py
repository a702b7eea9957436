"""The event envelope (DESIGN.md, "The event envelope") and its canonical bytes.

`NewEvent` is what a writer builds; the store assigns `stream_id`, `seq`,
`prev_hash`, `hash` and `position` and returns `Event`s.

    hash = sha256(prev_hash || canonical_json(envelope without hash and position))

Canonical JSON is orjson with sorted keys and no whitespace; `occurred_at` is
always UTC with microseconds (`2026-01-02T03:04:05.000006Z`). The exact bytes
that were hashed are stored (`body`), so verification never depends on
re-encoding.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

import orjson
from pydantic import BaseModel, ConfigDict, TypeAdapter, field_serializer

from events.payloads import SCHEMA_VERSIONS, Payload


def genesis_hash(stream_id: str) -> str:
    """The fixed value the first event of a stream chains from."""
    return hashlib.sha256(b"genesis:" + stream_id.encode()).hexdigest()


def chain_hash(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + body).hexdigest()


def uuid7(unix_ms: int, rand: bytes) -> str:
    """UUIDv7 (RFC 9562) from a millisecond timestamp and 10 random bytes."""
    value = (unix_ms & ((1 << 48) - 1)) << 80
    r = int.from_bytes(rand[:10], "big")
    value |= (0x7 << 76) | (((r >> 62) & 0xFFF) << 64) | (0b10 << 62) | (r & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def new_id() -> str:
    """A fresh UUIDv7 from the clock (shell code only: pure code gets ids passed in)."""
    return uuid7(time.time_ns() // 1_000_000, os.urandom(10))


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_ts(ts: datetime) -> str:
    # isoformat is 5x faster than strftime and gives the same text for years
    # 1000-9999: 2026-01-02T03:04:05.000006Z. A time in UTC (as `utcnow` makes
    # them) ends in "+00:00": swap that for the Z instead of converting.
    if ts.tzinfo is UTC:
        return ts.isoformat(timespec="microseconds")[:-6] + "Z"
    if ts.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_set = object.__setattr__
_new = object.__new__
# BaseModel's slots, set through their descriptors: a third less than four
# object.__setattr__ calls, which look each name up on the class first.
_fields_set, _extra, _private = (
    BaseModel.__dict__[k].__set__
    for k in ("__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
)


# Per model: (how many fields, the set of them) for a frozen one, whose
# instances can share that set as their "fields set" (pydantic copies it
# before it changes one: model_copy; a frozen model's setattr raises first).
_EVERY: dict[type[Any], tuple[int, set[str]]] = {}


def _every(model: type[Any]) -> tuple[int, set[str]]:
    fields = set(model.model_fields)
    every = _EVERY[model] = (len(fields) if model.model_config.get("frozen") else -1, fields)
    return every


def construct_trusted(model: type[Any], values: dict[str, Any]) -> Any:
    """`model.model_construct(**values)` for values that are complete and of the
    right types (every field, as our own code built them), at a quarter of its
    cost or less: what pydantic's `model_construct` and `model_copy` store, directly.
    Only for models without validators, post-init or private attributes."""
    m = _new(model)  # no validation, no __init__
    _set(m, "__dict__", values)
    n, every = _EVERY.get(model) or _every(model)
    _fields_set(m, every if len(values) == n else set(values))  # a set per model: 5% of a fold
    _extra(m, None)
    _private(m, None)
    return m


class NewEvent(BaseModel):
    """An event before the store has placed it in a stream."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    payload: Payload
    event_id: str
    occurred_at: datetime
    actor: str
    correlation_id: str
    causation_id: str | None = None
    idempotency_key: str | None = None

    @classmethod
    def create(
        cls,
        payload: Any,
        *,
        actor: str,
        correlation_id: str,
        causation_id: str | None = None,
        idempotency_key: str | None = None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
    ) -> NewEvent:
        return cls(
            payload=payload,
            event_id=event_id or new_id(),
            occurred_at=occurred_at or utcnow(),
            actor=actor,
            correlation_id=correlation_id,
            causation_id=causation_id,
            idempotency_key=idempotency_key,
        )

    @property
    def type(self) -> str:
        return self.payload.type


_SCALARS = (str, int, float, bool, NoneType)


def _plain(annotation: Any) -> bool:
    """A field type whose validated value orjson writes exactly as pydantic's
    JSON mode would hand it over: a scalar, a string literal, an optional
    one, or a list, tuple or dict of strings."""
    if annotation in _SCALARS:
        return True
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return all(type(a) is str for a in args)
    if origin is Union or origin is UnionType:
        return all(_plain(a) for a in args)
    if origin is tuple:
        return args == (str, Ellipsis)
    if origin is list:
        return args == (str,)
    if origin is dict:
        return args == (str, str)
    return False


_PLAIN: dict[type, bool] = {}


def payload_data(payload: Any) -> dict[str, Any]:
    """`payload.model_dump(mode="json")`, or for a payload type whose every
    field is plain (`_plain`) and that has no serializer or computed field,
    its own validated `__dict__` (the same canonical bytes, at a tenth of the
    cost: 2-3 us an event, a fifth of sealing it). Read-only."""
    cls = type(payload)
    plain = _PLAIN.get(cls)
    if plain is None:
        hooks = cls.__pydantic_decorators__
        plain = _PLAIN[cls] = (
            not (hooks.field_serializers or hooks.model_serializers or cls.model_computed_fields)
            and cls.model_config.get("extra") == "forbid"
            and all(_plain(f.annotation) and f.exclude is None for f in cls.model_fields.values())
        )
    return payload.__dict__ if plain else payload.model_dump(mode="json")  # type: ignore[no-any-return]


def canonical_json(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def seal(
    stream_id: str, batch: list[NewEvent] | tuple[NewEvent, ...], last_seq: int, prev_hash: str
) -> list[tuple[int, bytes, str]]:
    """Place a batch after (last_seq, prev_hash): (seq, hashed bytes, hash) per event.

    The one place the hashed part of an envelope is built: `canonical_json`
    of it, inlined, with three changes that give the same bytes for less CPU (bench/README.md, append, fifth session;
    4.1 to 2.9 us an event in 100-event batches):
    - a UTC `occurred_at` with microseconds goes to orjson as the datetime
      (`OPT_UTC_Z` writes exactly `format_ts`'s text then; without
      microseconds orjson would drop the `.000000`, so those take `format_ts`);
    - each body is copied to a bytes object of its own size: orjson returns
      its output buffer (KBs) shrunk in place, and with many of them alive at
      once (a 1,000-event batch, a group commit) the allocator took a fresh
      page for nearly every event, a page fault each (6.4 against 3.0 us an
      event; the copy costs 0.1 us when there are few);
    - the hash takes prev_hash and body as two updates, not a concatenation.
    `tests/test_append_bytes.py` pins the bytes of every occurred_at shape."""
    sealed = []
    dumps, opt, sha256 = orjson.dumps, orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z, hashlib.sha256
    versions, copy = SCHEMA_VERSIONS, memoryview
    for seq, new in enumerate(batch, start=last_seq + 1):
        d = new.__dict__
        payload, ts = d["payload"], d["occurred_at"]
        type_ = payload.type
        body = dumps(
            {
                "stream_id": stream_id,
                "seq": seq,
                "event_id": d["event_id"],
                "type": type_,
                "schema_version": versions[type_],
                # orjson writes a UTC datetime with microseconds as format_ts does
                "occurred_at": (
                    ts
                    if type(ts) is datetime and ts.tzinfo is UTC and ts.microsecond
                    else format_ts(ts)
                ),
                "actor": d["actor"],
                "correlation_id": d["correlation_id"],
                "causation_id": d["causation_id"],
                "idempotency_key": d["idempotency_key"],
                "payload": payload_data(payload),
                "prev_hash": prev_hash,
            },
            option=opt,
        )
        body = copy(body).tobytes()
        h = sha256(prev_hash.encode())  # chain_hash, without concatenating
        h.update(body)
        prev_hash = h.hexdigest()
        sealed.append((seq, body, prev_hash))
    return sealed


class Event(BaseModel):
    """A stored event: the envelope plus its place (`position`) and `hash`."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    position: int
    stream_id: str
    seq: int
    event_id: str
    type: str
    schema_version: int
    occurred_at: datetime
    actor: str
    correlation_id: str
    causation_id: str | None
    idempotency_key: str | None
    payload: Payload
    prev_hash: str
    hash: str

    @field_serializer("occurred_at")
    def _ts(self, ts: datetime) -> str:
        return format_ts(ts)

    def to_record(self) -> dict[str, Any]:
        """JSON data of the whole event (the export format, one line per event)."""
        return self.model_dump(mode="json")


EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


# model_construct would also run these; Event has neither, and must stay so for `placed`.
assert not Event.__pydantic_post_init__ and not Event.__private_attributes__
assert Event.model_config.get("frozen")
_EVENT_FIELDS = (_EVERY.get(Event) or _every(Event))[1]  # construct_trusted's own


def placed(
    stream_id: str,
    batch: Sequence[NewEvent],
    sealed: list[tuple[int, bytes, str]],
    prev_hash: str,
    positions: dict[int, int],
) -> list[Event]:
    """The `Event`s a sealed batch became, stored at `positions` (seq ->
    position), without parsing the bodies back: the NewEvents were validated
    when they were made, and each body is exactly their envelope.

    `construct_trusted` inlined, with every event sharing one fields set
    (`_EVENT_FIELDS`, all fields): Event is frozen, so pydantic never changes
    it in place (model_copy copies it first). A set of its own was a third of
    an event's cost here, and one more object for the cyclic collector."""
    out: list[Event] = []
    add, versions, fields = out.append, SCHEMA_VERSIONS, _EVENT_FIELDS
    for e, (seq, _, digest) in zip(batch, sealed):
        d = e.__dict__
        payload, ts = d["payload"], d["occurred_at"]
        type_ = payload.type
        m = _new(Event)
        _set(
            m,
            "__dict__",
            {
                "position": positions[seq],
                "stream_id": stream_id,
                "seq": seq,
                "event_id": d["event_id"],
                "type": type_,
                "schema_version": versions[type_],
                "occurred_at": ts if ts.tzinfo is UTC else ts.astimezone(UTC),
                "actor": d["actor"],
                "correlation_id": d["correlation_id"],
                "causation_id": d["causation_id"],
                "idempotency_key": d["idempotency_key"],
                "payload": payload,
                "prev_hash": prev_hash,
                "hash": digest,
            },
        )
        _fields_set(m, fields)
        _extra(m, None)
        _private(m, None)
        add(m)
        prev_hash = digest
    return out

"""Reading stored bodies back into `Event`s, upcasting old schema versions.

An upcaster turns the payload of (type, version) into version + 1. Unknown
types and versions newer than this code are an `UnknownEvent` error, never a
silent skip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError

from events.envelope import Event
from events.errors import UnknownEvent
from events.payloads import PAYLOAD_TYPES, SCHEMA_VERSIONS

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(type_: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    def register(fn: Upcaster) -> Upcaster:
        UPCASTERS[(type_, from_version)] = fn
        return fn

    return register


@upcaster("ToolCallStarted", 1)
@upcaster("ModelRequested", 1)
def _no_trace(payload: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2: written before traces were recorded."""
    return {**payload, "trace_id": None}


def upcast(record: dict[str, Any]) -> dict[str, Any]:
    """Bring a decoded envelope to today's schema version of its type."""
    type_, version = record["type"], record["schema_version"]
    current = SCHEMA_VERSIONS.get(type_)
    if current is None or version > current or version < 1:
        raise UnknownEvent(record["stream_id"], record["seq"], type_, version)
    payload = record["payload"]
    while version < current:
        step = UPCASTERS.get((type_, version))
        if step is None:
            raise UnknownEvent(record["stream_id"], record["seq"], type_, version)
        payload = step(payload)
        version += 1
    return {**record, "payload": payload, "schema_version": version}


# Each payload type's version and fields today: a stored payload at that
# version with exactly these keys was written by today's model. The names are
# the string objects orjson's key cache gives a parsed body's keys, so each
# key of a payload compares by identity, not by its characters (a third of
# the check, which is a tenth of a fold); any other copy compares equal too.
TODAY: dict[str, tuple[int, frozenset[str]]] = {
    t: (SCHEMA_VERSIONS[t], frozenset(orjson.loads(orjson.dumps(dict.fromkeys(m.model_fields)))))
    for t, m in PAYLOAD_TYPES.items()
}


def current(record: dict[str, Any]) -> dict[str, Any]:
    """A decoded envelope (plain JSON data) at today's schema version, with a
    payload a fold can read: the fast path for replaying many events, which
    builds no `Event`.

    A payload at today's version whose keys are exactly its model's fields is
    taken as stored: the store only writes bodies dumped from validated models,
    and their bytes are hash-chained. Anything else is upcast and validated by
    its payload model (ValidationError if it does not fit, UnknownEvent for an
    unknown type or version), and its payload becomes the model's field values."""
    today = TODAY.get(record["type"])
    payload = record["payload"]
    if (
        today is not None
        and today[0] == record["schema_version"]
        and type(payload) is dict
        and payload.keys() == today[1]
    ):
        return record
    record = upcast(record)
    model = PAYLOAD_TYPES[record["type"]].model_validate(record["payload"])
    return {**record, "payload": model.__dict__}


def decode(
    position: int,
    body: bytes,
    hash_: str,
    reveal: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Event:
    """The stored bytes as an `Event`. Fast path: validate the JSON in pydantic's
    core with position and hash spliced in; anything not at today's version
    (or not valid as today's model) takes the upcasting path. A body with
    sealed fields (`events.sealing`) is opened with `reveal` when given."""
    if reveal is not None and b'"sealed:v1:' in body:
        record = reveal(orjson.loads(body))
        record["position"] = position
        record["hash"] = hash_
        return Event.model_validate(upcast(record))
    try:
        event = Event.model_validate_json(
            b"".join(
                (
                    body[:-1],
                    b',"position":',
                    str(position).encode(),
                    b',"hash":"',
                    hash_.encode(),
                    b'"}',
                )
            )
        )
        if SCHEMA_VERSIONS.get(event.type) == event.schema_version:
            return event
    except ValidationError:
        pass
    record = orjson.loads(body)
    record["position"] = position
    record["hash"] = hash_
    return Event.model_validate(upcast(record))

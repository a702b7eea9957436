"""The append's PostgreSQL array parameters, in binary, encoded here.

`events.inserts` sends a batch as its columns through `unnest`, one array
per column. psycopg's list dumper finds each element's dumper and packs
each element in Python: 1.5 us an event for the eight arrays of a 100-event
batch. The encoders below do it with a few C-level maps and one join per
array: 0.9 us (bench/README.md, append, fifth session). They write
PostgreSQL's binary array format (`array_recv`): the number of dimensions,
a has-NULLs flag, the element type, each dimension's length and lower
bound, then each element as its length (-1 for NULL) and its bytes.

A column goes in as `Int4s`, `Varchars` or `Byteas` (the list it holds);
`register` gives a psycopg connection the dumpers that encode them, with
the connection's client encoding for text. Pure but for `register`, which
gets the driver module passed in (psycopg is imported only where
PostgreSQL is used).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any

INT4, VARCHAR, BYTEA = 23, 1043, 17  # element type oids
INT4_ARRAY, VARCHAR_ARRAY, BYTEA_ARRAY = 1007, 1015, 1001

_HEAD = struct.Struct(">iiiii").pack  # one dimension: ndim, has NULLs, element oid, length, lbound
_EMPTY = struct.Struct(">iii").pack  # no dimension: ndim 0, has NULLs, element oid
_LEN = struct.Struct(">i").pack
_INT4 = struct.Struct(">ii").pack  # an int4 element: its length (4) and value
_NULL = _LEN(-1)


class Int4s:
    """A list of ints sent as one binary int4[]."""

    __slots__ = ("items",)

    def __init__(self, items: Sequence[int]) -> None:
        self.items = items


class Varchars:
    """A list of strings (None for NULL) sent as one binary varchar[]."""

    __slots__ = ("items",)

    def __init__(self, items: Sequence[str | None]) -> None:
        self.items = items


class Byteas:
    """A list of bytes sent as one binary bytea[]."""

    __slots__ = ("items",)

    def __init__(self, items: Sequence[bytes]) -> None:
        self.items = items


def int4_array(items: Sequence[int]) -> bytes:
    if not items:
        return _EMPTY(0, 0, INT4)
    return _HEAD(1, 0, INT4, len(items), 1) + b"".join(map(_INT4, repeat(4), items))


def bytea_array(items: Sequence[bytes]) -> bytes:
    if not items:
        return _EMPTY(0, 0, BYTEA)
    return _joined(BYTEA, 0, list(map(_LEN, map(len, items))), items)


def varchar_array(items: Sequence[str | None], encoding: str = "utf-8") -> bytes:
    if not items:
        return _EMPTY(0, 0, VARCHAR)
    if None in items:
        data = [b"" if s is None else s.encode(encoding) for s in items]
        lens = [_NULL if s is None else _LEN(len(b)) for s, b in zip(items, data)]
        return _joined(VARCHAR, 1, lens, data)
    data = list(map(str.encode, items, repeat(encoding)))  # type: ignore[arg-type]
    return _joined(VARCHAR, 0, list(map(_LEN, map(len, data))), data)


def _joined(oid: int, has_null: int, lens: list[bytes], data: Sequence[bytes]) -> bytes:
    """The header, then each element's length and bytes, in one join."""
    parts = [_HEAD(1, has_null, oid, len(data), 1), *repeat(b"", 2 * len(data))]
    parts[1::2] = lens
    parts[2::2] = data
    return b"".join(parts)


_DUMPERS: dict[int, list[tuple[type, type]]] = {}


def register(conn: Any, driver: Any) -> None:
    """Let psycopg connection `conn` send `Int4s`, `Varchars` and `Byteas`
    (`driver`: the psycopg module, as the engine loaded it)."""
    made = _DUMPERS.get(id(driver))
    if made is None:
        made = _DUMPERS[id(driver)] = [
            (Int4s, _dumper(driver, INT4_ARRAY, lambda items, _: int4_array(items))),
            (Varchars, _dumper(driver, VARCHAR_ARRAY, varchar_array)),
            (Byteas, _dumper(driver, BYTEA_ARRAY, lambda items, _: bytea_array(items))),
        ]
    for cls, dumper in made:
        conn.adapters.register_dumper(cls, dumper)


def _dumper(driver: Any, oid: int, encode: Callable[[Any, str], bytes]) -> type:
    """A binary psycopg Dumper of one wrapper class."""

    class ArrayDumper(driver.adapt.Dumper):  # type: ignore[misc]
        format = driver.pq.Format.BINARY

        def __init__(self, cls: type, context: Any = None) -> None:
            super().__init__(cls, context)
            self.oid = oid
            conn = self.connection
            self.encoding = conn.info.encoding if conn is not None else "utf-8"

        def dump(self, obj: Any) -> bytes:
            return encode(obj.items, self.encoding)

    return ArrayDumper

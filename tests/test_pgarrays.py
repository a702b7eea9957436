"""The append's binary arrays (`events.pgarrays`) are the bytes psycopg's own
list dumper writes, and PostgreSQL reads back exactly the lists we sent:
NULLs, empty strings, non-ASCII text, large ints and bodies, an empty list."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.adapt import PyFormat, Transformer
from psycopg.types.numeric import Int4

from events import pgarrays
from events.pgarrays import Byteas, Int4s, Varchars

INTS = [1, 2, 32767, 32768, 2**31 - 1, -5]
TEXTS = ["a", "", 'ü\n"{x}\\', "0190f0e0-0000-7000-8000-000000000000", "x" * 5000]
KEYS = ["step:1", None, None, "step:1"]
BODIES = [b'{"a":1}', b"", bytes(range(256)) * 40]


def _psycopg(items: list[object]) -> bytes:
    return bytes(Transformer().get_dumper(items, PyFormat.BINARY).dump(items))  # type: ignore[arg-type]


def _oid_at(data: bytes) -> int:
    return int.from_bytes(data[8:12], "big")


def test_bytes_match_psycopgs_list_dumper() -> None:
    assert pgarrays.int4_array(INTS) == _psycopg([Int4(i) for i in INTS])
    assert pgarrays.bytea_array(BODIES) == _psycopg(list(BODIES))
    for texts in (TEXTS, KEYS):
        ours, theirs = pgarrays.varchar_array(texts), _psycopg(list(texts))
        # The same but for the element type: varchar, where psycopg says text.
        assert (_oid_at(ours), _oid_at(theirs)) == (pgarrays.VARCHAR, 25)
        assert ours[:8] + ours[12:] == theirs[:8] + theirs[12:]


@pytest.mark.postgres
def test_postgresql_reads_back_what_was_sent(pg_url: str) -> None:
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        pgarrays.register(conn, psycopg)
        row = conn.execute(
            "SELECT %b::int[], %b::varchar[], %b::varchar[], %b::bytea[], %b::varchar[], %b::int[]",
            (Int4s(INTS), Varchars(TEXTS), Varchars(KEYS), Byteas(BODIES), Varchars([]), Int4s([])),
        ).fetchone()
    assert row == (INTS, TEXTS, KEYS, BODIES, [], [])

"""`events.pg_arrays`: the append's column arrays, packed by us, reach
PostgreSQL as the same values psycopg's own list dumper sends."""

from __future__ import annotations

from typing import Any

import pytest

COLUMNS: list[tuple[str, str, list[Any]]] = [
    ("Int4s", "int[]", [1, 2, 2_147_483_647, -5]),
    ("Int4s", "int[]", []),
    ("Texts", "varchar[]", ["a", "", "élan ✓ 😀", 'quo"te\\ {x,y} NULL', None, "z"]),
    ("Texts", "varchar[]", [None, None]),
    ("Texts", "varchar[]", []),
    ("Byteas", "bytea[]", [b"", b"\x00\xff{}", None, b'{"k":1}']),
    ("Byteas", "bytea[]", []),
]


@pytest.mark.postgres
@pytest.mark.parametrize(("kind", "cast", "values"), COLUMNS)
def test_arrays_arrive_as_psycopg_sends_them(
    pg_url: str, kind: str, cast: str, values: list[Any]
) -> None:
    import psycopg

    from events import pg_arrays

    pg_arrays.register()
    sql = f"SELECT %b::{cast}, %b::{cast} IS NOT DISTINCT FROM %b::{cast}"
    with psycopg.connect(pg_url) as conn:
        ours = getattr(pg_arrays, kind)(values)
        typed = f"'{{}}'::{cast}" if not values else None
        if typed is None:
            got, same = conn.execute(sql, (ours, ours, list(values))).fetchone()  # type: ignore[misc]
        else:  # psycopg's own dumper cannot type an empty list: compare with a literal
            got = conn.execute(f"SELECT %b::{cast}", (ours,)).fetchone()[0]  # type: ignore[index]
            same = conn.execute(
                f"SELECT %b::{cast} IS NOT DISTINCT FROM {typed}", (ours,)
            ).fetchone()[0]  # type: ignore[index]
        assert same is True
        assert got == values


def test_a_store_appends_through_them(store: Any) -> None:
    """Both backends store and read back the same events (PostgreSQL through
    the packed arrays, with a NULL key array for unkeyed batches)."""
    from events import payloads as p
    from events.envelope import NewEvent

    def batch(key: str | None, n: int) -> list[NewEvent]:
        return [
            NewEvent.create(
                p.SessionFailed(error="e", message=f"m{i} é"),
                actor="w",
                correlation_id="job-ü",
                causation_id=None,
                idempotency_key=key,
            )
            for i in range(n)
        ]

    first = store.append("s-arr", batch("k1", 6), 0)
    second = store.append("s-arr", batch(None, 1), 6)
    read = list(store.read_stream("s-arr"))
    assert [e.seq for e in read] == list(range(1, 8))
    assert [e.hash for e in read] == [e.hash for e in first + second]
    assert read[-1].payload.message == "m0 é" and read[0].correlation_id == "job-ü"

"""The INSERT statements of the append paths, and their parameters, per dialect.

SQLite: a multi-row VALUES list, 9 parameters an event (the driver keeps
each text compiled). PostgreSQL: the batch's columns as arrays through
`unnest`, so a batch of any size is one statement text with 9 parameters
(plus the guard's). psycopg converts and caches a statement's text only up
to 50 parameters: a 100-event VALUES list (905 parameters) was re-parsed in
Python on every append, a third of a 100-event append's time, and the server
planned 900 parameters each time; the array form is prepared once. The
arrays go in binary (`%b`), encoded by `events.pgarrays` (psycopg's text
form quotes every element through a regex, 10x the cost; its binary list
dumper packs each element in Python, 1.7x).

Both forms insert the rows in batch order, so positions rise with seq. On
PostgreSQL `RETURNING position, seq` pairs them; on SQLite the statement's
last rowid and row count do (`Inserts.positions`), without RETURNING's cost.

A keyed batch stores its idempotency key in the `idempotency_key` column of
its first and last rows only (every body holds it): the partial index on
that column (0005) then takes two entries per append instead of one per
event, and the batch stored under a key is the seq range between them
(`KEY_ROWS`), which also finds batches stored before 0005 with the key on
every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from events.appending import INSERT_CHUNK
from events.envelope import NewEvent
from events.pgarrays import Byteas, Int4s, Varchars

COLUMNS = "stream_id, seq, event_id, type, correlation_id, idempotency_key, prev_hash, hash, body"
N_COLUMNS = 9

# The columns that differ per event, as PostgreSQL arrays (the stream id is one
# value; a NULL key array pads with NULLs, as unnest pads a shorter array).
_UNNEST = (
    "SELECT {p}, v.seq, v.event_id, v.type, v.correlation_id, v.key, v.prev_hash, v.hash, v.body"
    " FROM unnest({b}::int[], {b}::varchar[], {b}::varchar[], {b}::varchar[], {b}::varchar[],"
    " {b}::varchar[], {b}::varchar[], {b}::bytea[])"
    " AS v(seq, event_id, type, correlation_id, key, prev_hash, hash, body)"
)

# The rows stored under an idempotency key, in any order: the seq range from
# its first to its last keyed row. Parameters: (stream_id, stream_id, key,
# stream_id, key). The unary plus keeps SQLite from finding min(seq) by
# walking the stream in (stream_id, seq) order, from its start, to the first
# keyed row: the key index holds a stream's few keyed rows.
KEY_ROWS = (
    "SELECT seq, hash, position, body FROM events WHERE stream_id = {p} AND seq BETWEEN"
    " (SELECT min(+seq) FROM events WHERE stream_id = {p} AND idempotency_key = {p})"
    " AND (SELECT max(+seq) FROM events WHERE stream_id = {p} AND idempotency_key = {p})"
)


def edge_keys(key: str | None, n: int) -> list[str | None]:
    """The `idempotency_key` column of a batch of `n` rows: the key on its
    first and last rows, NULL between (and everywhere when unkeyed)."""
    if key is None or n <= 2:
        return [key] * n
    return [key, *([None] * (n - 2)), key]


def guard(param: str, after_seq: bool, keyed: bool) -> str:
    """The WHERE of the one-statement append (`events.heads`): row n is there
    with hash h, and the key was not stored. Parameters: (stream_id, seq, hash)
    when `after_seq`, then (stream_id, key) when `keyed`."""
    checks = []
    if after_seq:
        checks.append(
            f"EXISTS (SELECT 1 FROM events WHERE stream_id = {param} AND seq = {param}"
            f" AND hash = {param})"
        )
    if keyed:
        checks.append(
            f"NOT EXISTS (SELECT 1 FROM events WHERE stream_id = {param}"
            f" AND idempotency_key = {param})"
        )
    return (" WHERE " + " AND ".join(checks)) if checks else ""


class Inserts:
    """A store's INSERT texts (made once each) and the parameters they take."""

    def __init__(self, dialect: str) -> None:
        self.arrays = dialect == "postgresql"
        self.param = "%s" if self.arrays else "?"
        self._sql: dict[tuple[int, bool, bool], str] = {}

    def params(
        self,
        stream_id: str,
        batch: Sequence[NewEvent],
        sealed: list[tuple[int, bytes, str]],
        key: str | None,
        prev: str,
    ) -> tuple[object, ...]:
        """The INSERT parameters of a sealed batch (without the guard's)."""
        if self.arrays:
            hashes = [digest for _, _, digest in sealed]
            return (
                stream_id,
                Int4s([seq for seq, _, _ in sealed]),
                Varchars([e.event_id for e in batch]),
                Varchars([e.payload.type for e in batch]),
                Varchars([e.correlation_id for e in batch]),
                None if key is None else Varchars(edge_keys(key, len(batch))),
                Varchars([prev, *hashes[:-1]]),
                Varchars(hashes),
                Byteas([body for _, body, _ in sealed]),
            )
        params: list[object] = []
        for e, (seq, body, digest), k in zip(batch, sealed, edge_keys(key, len(batch))):
            params += (
                stream_id,
                seq,
                e.event_id,
                e.payload.type,
                e.correlation_id,
                k,
                prev,
                digest,
                body,
            )
            prev = digest
        return tuple(params)

    def sql(self, n_rows: int, after_seq: bool = False, keyed: bool = False) -> str:
        """The INSERT of `n_rows` events, guarded when `after_seq` or `keyed`."""
        k = (0 if self.arrays else n_rows, after_seq, keyed)
        text = self._sql.get(k)
        if text is None:
            p = self.param
            if self.arrays:
                rows = _UNNEST.format(p=p, b="%b")
            else:
                values = "VALUES " + ",".join(["(" + ",".join([p] * N_COLUMNS) + ")"] * n_rows)
                # A guard needs a SELECT to hang its WHERE on.
                rows = f"SELECT * FROM ({values}) AS v" if after_seq or keyed else values
            text = self._sql[k] = (
                f"INSERT INTO events ({COLUMNS}) "
                + rows
                + guard(p, after_seq, keyed)
                + (" RETURNING position, seq" if self.arrays else "")
            )
        return text

    def positions(self, cur: Any, params: Sequence[object]) -> dict[int, int]:
        """Each seq the INSERT just run on `cur` with `params` stored, and its
        position ({} when a guard let nothing in). PostgreSQL: RETURNING's rows
        (a sequence that concurrent writers share need not give one statement
        consecutive values). SQLite: the statement held the write lock and
        gave each row the largest rowid plus one (a table without
        AUTOINCREMENT, never deleted from), so its rows hold consecutive
        positions ending at its last rowid: no RETURNING, which cost about 2 us
        an event of SQLite's 13 (100 per INSERT, CPU time)."""
        if self.arrays:
            return {s: p for p, s in cur.fetchall()}
        n = cur.rowcount
        if n <= 0:
            return {}
        first = cur.lastrowid - n + 1
        return {seq: first + i for i, seq in enumerate(params[1 : n * N_COLUMNS : N_COLUMNS])}  # type: ignore[misc]

    def chunks(self, params: tuple[object, ...]) -> list[tuple[str, tuple[object, ...]]]:
        """Unguarded INSERTs of `params`: one on PostgreSQL, a statement per
        INSERT_CHUNK rows on SQLite."""
        if self.arrays:
            return [(self.sql(0), params)]
        step = INSERT_CHUNK * N_COLUMNS
        return [
            (self.sql(len(params[i : i + step]) // N_COLUMNS), params[i : i + step])
            for i in range(0, len(params), step)
        ]


# Several streams' batches in one statement (`events.group_commit` on
# PostgreSQL): every column an array, the stream id and the key too.
MANY = (
    f"INSERT INTO events ({COLUMNS})"
    " SELECT v.stream_id, v.seq, v.event_id, v.type, v.correlation_id, v.key, v.prev_hash,"
    " v.hash, v.body FROM unnest(%b::varchar[], %b::int[], %b::varchar[], %b::varchar[],"
    " %b::varchar[], %b::varchar[], %b::varchar[], %b::varchar[], %b::bytea[])"
    " AS v(stream_id, seq, event_id, type, correlation_id, key, prev_hash, hash, body)"
    " RETURNING position, stream_id, seq"
)

# Each stream's head and the rows already stored under each (stream, key), in
# one round trip for the whole group. Head rows have no position.
HEADS_AND_KEYS = (
    "SELECT h.stream_id, h.seq, h.hash, NULL::bigint, NULL::bytea, NULL::varchar"
    " FROM unnest(%b::varchar[]) AS s(id) CROSS JOIN LATERAL"
    " (SELECT stream_id, seq, hash FROM events WHERE stream_id = s.id"
    " ORDER BY seq DESC LIMIT 1) AS h"
    " UNION ALL SELECT e.stream_id, e.seq, e.hash, e.position, e.body, e.idempotency_key"
    " FROM unnest(%b::varchar[], %b::varchar[]) AS k(id, key)"
    " JOIN events e ON e.stream_id = k.id AND e.idempotency_key = k.key"
)


def many_params(
    items: Sequence[tuple[str, Sequence[NewEvent], list[tuple[int, bytes, str]], str | None, str]],
) -> tuple[object, ...]:
    """`MANY`'s parameters for (stream id, batch, sealed, key, prev) items."""
    sid: list[str] = []
    seq: list[int] = []
    eid: list[str] = []
    typ: list[str] = []
    corr: list[str] = []
    key: list[str | None] = []
    prev_c: list[str] = []
    hash_c: list[str] = []
    body: list[bytes] = []
    for stream_id, batch, sealed, k, prev in items:
        for e, (n, data, digest) in zip(batch, sealed):
            sid.append(stream_id)
            seq.append(n)
            eid.append(e.event_id)
            typ.append(e.payload.type)
            corr.append(e.correlation_id)
            key.append(k)
            prev_c.append(prev)
            hash_c.append(digest)
            body.append(data)
            prev = digest
    return (
        Varchars(sid),
        Int4s(seq),
        Varchars(eid),
        Varchars(typ),
        Varchars(corr),
        Varchars(key),
        Varchars(prev_c),
        Varchars(hash_c),
        Byteas(body),
    )

"""One job's stored rows read with the database's own driver (sqlite3,
psycopg), not SQLAlchemy: what `orchestrator status` reads, whose start-up
stays under `celery --help`'s (bench/cli_startup.py).

`job_rows` reads every row of a job (its stream and its sessions', by
correlation id) in one query, so one consistent state, as
`SqlEventStore.raw_all` gives them: (position, body, hash) in position
order, bodies as stored. With them come the stored data keys their sealed
fields name, so a reader opens those fields as the store would
(`StoredKeys`, a read-only `events.sealing.KeyRing`).

It answers None whenever it cannot be sure to read what the store would: a
URL form it does not know, no database file, a schema not at `HEAD`, a
database it cannot reach. The caller then opens the store, which reads the
rows or reports the problem in its own words.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from events.revision import HEAD, VERSION_TABLE
from events.sealing import MARK, Forgotten, Kek, KeyRecord, SealError, stored_key
from events.urls import libpq_url, normalize_url, sqlite_path

Row = tuple[int, bytes, str]  # position, body as stored, hash

_SQL_ROWS = "SELECT position, body, hash FROM events WHERE correlation_id = {p} ORDER BY position"
_SQL_KEYS = (
    "SELECT key_id, kek_id, wrapped, forgotten_at, forgotten_by, forgotten_reason "
    "FROM data_keys WHERE key_id IN ({ps})"
)
_KEY_ID = re.compile(re.escape(MARK) + rb"([^:\"]+):")


@dataclass
class JobRows:
    rows: list[Row]
    keys: dict[str, KeyRecord] = field(default_factory=dict)  # by key id

    def loads(
        self, reveal: Callable[[dict[str, Any]], dict[str, Any]] | None
    ) -> Callable[[bytes], dict[str, Any]]:
        """`SqlEventStore.loads` for these rows: a stored body as JSON data,
        its sealed fields opened with `reveal` (None: left as stored, as a
        store without a sealing filter leaves them)."""

        def loads(body: bytes) -> dict[str, Any]:
            record: dict[str, Any] = orjson.loads(body)
            if reveal is not None and MARK in body:
                return reveal(record)
            return record

        return loads


class StoredKeys:
    """The data keys `job_rows` read, opened with the KEK: a read-only
    `KeyRing` (lookups only; nothing is sealed through it)."""

    def __init__(self, keys: dict[str, KeyRecord], kek: Kek) -> None:
        self.keys = keys
        self.kek = kek

    def active(self, scope: str) -> tuple[str, bytes]:
        raise SealError(f"stream {scope}: a reader's key ring seals nothing")

    def lookup(self, key_id: str) -> bytes | Forgotten | None:
        row = self.keys.get(key_id)
        return None if row is None else stored_key(self.kek, key_id, row)


def job_rows(url: str, job_id: str) -> JobRows | None:
    """The rows of job `job_id` in the store at `url`, or None (open the store)."""
    url = normalize_url(url)
    path = sqlite_path(url)
    if path is not None and "?" not in url:
        if not path.is_file():
            return None
        try:
            # mode=rw: never create a database that is not there.
            conn: Any = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=60)
        except sqlite3.Error:
            return None
        return _read(conn, "?", job_id, sqlite3.Error)
    pg = libpq_url(url)
    if pg is None:
        return None
    import psycopg  # noqa: PLC0415  (events/ has no lazy helper; only this path needs it)

    try:
        conn = psycopg.connect(pg, autocommit=True)
    except psycopg.Error:
        return None
    return _read(conn, "%s", job_id, psycopg.Error)


def _read(conn: Any, p: str, job_id: str, errors: type[Exception]) -> JobRows | None:
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT version_num FROM {VERSION_TABLE}")
        if [r[0] for r in cur.fetchall()] != [HEAD]:
            return None
        cur.execute(_SQL_ROWS.format(p=p), (job_id,))
        rows = [(r[0], bytes(r[1]), r[2]) for r in cur.fetchall()]
        ids = sorted({m.decode() for _, body, _ in rows for m in _KEY_ID.findall(body)})
        keys: dict[str, KeyRecord] = {}
        if ids:
            cur.execute(_SQL_KEYS.format(ps=", ".join([p] * len(ids))), ids)
            keys = {
                r[0]: (r[1], None if r[2] is None else bytes(r[2]), r[3], r[4], r[5])
                for r in cur.fetchall()
            }
        return JobRows(rows, keys)
    except errors:
        return None
    finally:
        conn.close()

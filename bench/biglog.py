"""Large logs for the whole-log audit bench (bench/replay.py), written by a bulk path.

`store.append` seals and inserts a batch per call; a million events that way
take many minutes. Here the same rows are built once (the product's own
`events.envelope.seal`, so every body, hash and link is what an append would
have stored) and inserted in large transactions: `executemany` on SQLite,
`COPY` on PostgreSQL. Only the writing is bulk: the rows are identical in
kind to appended ones, and the audit verifies every one of them.

Not a cache: logs are built into scratch databases and dropped afterwards.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from bench.common import new_events, now, session_payloads

STREAM_LEN = 100  # events per session in a whole log
COLUMNS = "stream_id, seq, event_id, type, correlation_id, idempotency_key, prev_hash, hash, body"


def session_rows(
    sid: str, payloads: list[Any], correlation_id: str, start: int = 0, first_seq: int = 0
) -> Iterator[tuple[Any, ...]]:
    """The rows `store.append(sid, events, first_seq)` would insert."""
    from events.envelope import genesis_hash, seal

    news = new_events(payloads, correlation_id=correlation_id, start=start)
    prev = genesis_hash(sid)
    for e, (seq, body, digest) in zip(news, seal(sid, news, first_seq, prev)):
        yield (sid, seq, e.event_id, e.type, correlation_id, None, prev, digest, body)
        prev = digest


def sessions(n_events: int, seed: int = 42) -> Iterator[tuple[str, str, list[Any], int]]:
    """(stream id, job id, payloads, first event number) of `n_events` in
    sessions of STREAM_LEN realistic events, 100 sessions a job."""
    rng = random.Random(seed)
    for s in range(n_events // STREAM_LEN):
        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        job = f"job-{s // 100}"
        yield sid, job, session_payloads(rng, sid, STREAM_LEN, job_id=job), s * STREAM_LEN


def log_rows(
    n_events: int, seed: int = 42, also: Callable[[list[Any]], Any] | None = None
) -> Iterator[tuple[Any, ...]]:
    """The rows of `sessions(n_events)`, session by session (position order
    groups a stream; the audit does not care). `also` sees each session's
    payloads (to write the same sessions into a peer's store)."""
    for sid, job, payloads, start in sessions(n_events, seed):
        if also is not None:
            also(payloads)
        yield from session_rows(sid, payloads, job, start=start)


def insert_rows(store: Any, rows: Iterator[tuple[Any, ...]], chunk: int = 20_000) -> int:
    """Insert rows into the store's database in transactions of `chunk`; returns
    how many. SQLite writes with synchronous=OFF: a bench log need not survive
    a power cut, and the timed reads do not care how rows were written."""
    n, t0 = 0, now()
    raw = store.engine.raw_connection()
    try:
        conn = raw.dbapi_connection
        pg = store.engine.dialect.name == "postgresql"
        if not pg:
            conn.execute("PRAGMA synchronous=OFF")
        batch: list[tuple[Any, ...]] = []

        def flush() -> None:
            if pg:
                with conn.cursor() as cur, cur.copy(f"COPY events ({COLUMNS}) FROM STDIN") as cp:
                    for r in batch:
                        cp.write_row(r)
                conn.commit()
            else:
                conn.execute("BEGIN")
                conn.executemany(
                    f"INSERT INTO events ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", batch
                )
                conn.execute("COMMIT")
            batch.clear()

        for r in rows:
            batch.append(r)
            n += 1
            if len(batch) >= chunk:
                flush()
                if n % 200_000 == 0:
                    print(f"  ... {n:,} rows, {now() - t0:,.0f} s", flush=True)
        if batch:
            flush()
        if not pg:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
    return n

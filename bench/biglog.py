"""Large logs for the whole-log audit bench (bench/replay.py), written by a bulk
path, and the bench's contenders that read them.

`store.append` seals and inserts a batch per call; a million events that way
take many minutes. Here the same rows are built once (the product's own
`events.envelope.seal`, so every body, hash and link is what an append would
have stored) and inserted in large transactions: `executemany` on SQLite,
`COPY` on PostgreSQL. Only the writing is bulk: the rows are identical in
kind to appended ones, and the audit verifies every one of them.

Not a cache: logs are built into scratch databases and dropped afterwards.
"""

from __future__ import annotations

import hashlib
import random
import resource
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from bench.common import ROOT, new_events, now, session_payloads

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


# -- contenders of the whole-log audit bench -----------------------------------------


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the audit's forks)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_ours(url: str, what: str, cpu: list[float]) -> Callable[[int], float]:
    """`audit` (verify + all projections) or `verify` (what `audit verify`
    runs), on all cores (or `what` ending in "1": one process). Each round
    runs in a new interpreter, as `orchestrator audit verify` does: forked
    workers then start from a small heap, not from this process's, whose
    earlier rounds left a gigabyte of freed memory that every write after a
    fork would copy. Timed inside that process, from the store's opening to
    the result."""

    def run(_: int) -> float:
        out = subprocess.run(
            [sys.executable, "-m", "bench.biglog", url, what],
            capture_output=True,
            check=True,
            cwd=ROOT,
        ).stdout
        el, c = orjson.loads(out.splitlines()[-1])
        cpu.append(c)
        return float(el)

    return run


def _audit_once(url: str, what: str) -> None:
    """One round of `run_ours`, in its own process: prints [seconds, CPU seconds]."""
    from events.audit import whole_store
    from events.store import open_store

    c, t = _cpu(), now()
    store = open_store(url)
    a = whole_store(
        store.engine,
        store.url,
        fold=what.startswith("audit"),
        processes=1 if what.endswith("1") else None,
    )
    el, c = now() - t, _cpu() - c
    store.close()
    if not a.report.ok or (what.startswith("audit") and len(a.projections) != a.report.streams):
        raise RuntimeError(f"the bench log did not verify: {a.report.problems[:3]}")
    print(orjson.dumps([el, c]).decode())


def run_floor(url: str) -> Callable[[int], float]:
    """The driver reading our rows in position order and checking each one's
    sha256 link (prev_hash + body == hash), nothing else: sqlite3, or psycopg
    with a server-side cursor."""
    sql = "SELECT position, prev_hash, hash, body FROM events ORDER BY position"

    def run(_: int) -> float:
        if url.startswith("sqlite"):
            conn: Any = sqlite3.connect(url.split("///", 1)[1])
            cur = conn.execute(sql)
        else:
            import psycopg

            conn = psycopg.connect(url.replace("+psycopg", ""))
            cur = conn.cursor(name="floor")
            cur.execute(sql, binary=True)
        sha = hashlib.sha256
        t, bad = now(), 0
        while rows := cur.fetchmany(5000):
            for _pos, prev, digest, body in rows:
                if sha(prev.encode() + body).hexdigest() != digest:
                    bad += 1
        el = now() - t
        conn.close()
        if bad:
            raise RuntimeError(f"{bad} rows of the bench log do not hash")
        return el

    return run


if __name__ == "__main__":
    _audit_once(sys.argv[1], sys.argv[2])

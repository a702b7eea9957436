"""The query plan of every query that reads the events table, on both backends,
at a given schema revision: `python -m bench.plans [REVISION]` (default: head;
at head it also counts the SQLite WAL pages each append commit writes).

Fills a scratch store with 20,000 realistic events (200 sessions of 100, one
job per 20 sessions), ANALYZEs it on PostgreSQL (as autovacuum would; nothing
ANALYZEs an embedded SQLite store), then prints SQLite's EXPLAIN QUERY PLAN
and PostgreSQL's EXPLAIN (COSTS OFF) for each query as `events.store` sends
it (docs/event-store-indexes.md holds the output before and after 0004).
"""

from __future__ import annotations

import random
import sys
import uuid
from typing import Any

from bench.common import new_events, pg_available, pg_drop, pg_recreate, rm_sqlite, scratch_dir
from bench.common import session_payloads as payloads
from events.schema import INDEXED_TYPES_SQL

HEAD = "SELECT seq, hash FROM events WHERE stream_id = :s ORDER BY seq DESC LIMIT 1"
# events.inserts.KEY_ROWS: a key's batch, the seq range between its first and last keyed rows.
KEY_ROWS = (
    "SELECT seq, hash, position, body FROM events WHERE stream_id = :s AND seq BETWEEN"
    " (SELECT min(+seq) FROM events WHERE stream_id = :s AND idempotency_key = :k)"
    " AND (SELECT max(+seq) FROM events WHERE stream_id = :s AND idempotency_key = :k)"
)
TAIL = "SELECT {n}, seq, position, body, hash FROM events WHERE stream_id = :s AND seq > 50"
# {plus}: "+" on SQLite, as events.reader writes it there (keeps the position key).
QUERIES: dict[str, str] = {
    "append, no key: the head": HEAD,
    "append, keyed: the head and the key's rows (one statement)": (
        "SELECT seq, hash, NULL, NULL FROM (" + HEAD + ") AS head UNION ALL " + KEY_ROWS
    ),
    "append after a known head: the guard of the one INSERT": (
        "SELECT 1 WHERE EXISTS (SELECT 1 FROM events WHERE stream_id = :s AND seq = 50"
        " AND hash = :h) AND NOT EXISTS (SELECT 1 FROM events WHERE stream_id = :s"
        " AND idempotency_key = :k)"
    ),
    "lost race: the key's rows (_by_key)": KEY_ROWS,
    "read_stream / raw_stream: a stream's tail": (
        "SELECT position, body, hash FROM events WHERE stream_id = :s AND seq > 50 ORDER BY seq"
    ),
    "read_tails: two streams' tails in one query (events.tails)": (
        TAIL.format(n=0) + " UNION ALL " + TAIL.format(n=1) + " ORDER BY 1, 2"
    ),
    "last_seq": "SELECT coalesce(max(seq), 0) FROM events WHERE stream_id = :s",
    "read_all / raw_all: a page of the log": (
        "SELECT position, body, hash FROM events WHERE position > 0 ORDER BY position LIMIT 2000"
    ),
    "read_correlation: a page of one job": (
        "SELECT position, body, hash FROM events WHERE position > 0 AND correlation_id = :c"
        " ORDER BY position LIMIT 2000"
    ),
    "a job's rows without the store (events.quickread)": (
        "SELECT position, body, hash FROM events WHERE correlation_id = :c ORDER BY position"
    ),
    "read_types: a page of a few types (with the partial index's clause, as raw_all adds it)": (
        "SELECT position, body, hash FROM events WHERE position > 0"
        " AND type IN ('ConfirmationRequested', 'ConfirmationGranted', 'ConfirmationDenied')"
        f" AND {INDEXED_TYPES_SQL.text} ORDER BY position LIMIT 2000"
    ),
    "read_types: a type the partial index does not hold": (
        "SELECT position, body, hash FROM events WHERE position > 0"
        " AND type IN ('TurnStarted') ORDER BY position LIMIT 2000"
    ),
    "rows(stream): one stream's rows for verify (events.reader)": (
        "SELECT position, stream_id, seq, prev_hash, hash, body FROM events"
        " WHERE stream_id = :s ORDER BY position"
    ),
    "rows of one part of the stream ids, whole-store audit (events.reader)": (
        "SELECT position, stream_id, seq, prev_hash, hash, body FROM events"
        " WHERE {plus}stream_id >= :s AND {plus}stream_id < 'z' ORDER BY position"
    ),
    "every stream and its last seq, a loose index scan (events.reader.stream_sizes)": (
        "WITH RECURSIVE s(id) AS (SELECT min(stream_id) FROM events UNION ALL"
        " SELECT (SELECT min(stream_id) FROM events WHERE stream_id > s.id) FROM s"
        " WHERE s.id IS NOT NULL)"
        " SELECT id, (SELECT max(seq) FROM events WHERE stream_id = s.id) FROM s"
        " WHERE id IS NOT NULL"
    ),
    "last position (events.reader.last_position)": "SELECT max(position) FROM events",
    "heads: every stream's last row after a position": (
        "SELECT e.stream_id, e.seq, e.hash, e.position FROM events e JOIN (SELECT stream_id,"
        " max(seq) AS seq FROM events WHERE position > 19000 GROUP BY stream_id) AS m"
        " ON e.stream_id = m.stream_id AND e.seq = m.seq"
    ),
    "heads of given streams": (
        "SELECT e.stream_id, e.seq, e.hash, e.position FROM events e JOIN (SELECT stream_id,"
        " max(seq) AS seq FROM events WHERE position > 0 AND stream_id IN (:s)"
        " GROUP BY stream_id) AS m ON e.stream_id = m.stream_id AND e.seq = m.seq"
    ),
    "stream_ids": "SELECT DISTINCT stream_id FROM events",
    "worker probe (tasks/worker_probe.py)": "SELECT 1 FROM events LIMIT 1",
}


def _fill(url: str, revision: str) -> tuple[Any, dict[str, str]]:
    from alembic import command

    from events import migrate
    from events.store import SqlEventStore

    store = SqlEventStore(url, check_schema=False)
    with store.engine.begin() as conn:
        cfg = migrate._config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    rng = random.Random(18)
    sid = ""
    for i in range(200):
        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        news = new_events(payloads(rng, sid, 100), correlation_id=f"job-{i // 20}", key="step:1")
        store.append(sid, news, 0)
    if store.engine.dialect.name != "sqlite":  # autovacuum does; nothing runs it on SQLite
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    return store, {"s": sid, "k": "step:1", "h": "0" * 64, "c": "job-3"}


def plans(url: str, revision: str) -> dict[str, list[str]]:
    import sqlalchemy as sa

    store, params = _fill(url, revision)
    sqlite = store.engine.dialect.name == "sqlite"
    out: dict[str, list[str]] = {}
    with store.engine.connect() as conn:
        for name, sql in QUERIES.items():
            sql = sql.replace("{plus}", "+" if sqlite else "")
            text = ("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN (COSTS OFF) ") + sql
            rows = conn.execute(sa.text(text), params).all()
            out[name] = [r[-1] for r in rows]
    store.close()
    return out


def wal_pages(d: Any) -> list[str]:
    """SQLite WAL pages written per commit (auto-checkpoint off), ours at head
    vs a bare single-row insert of the same bodies: pages, not time, so a
    busy machine does not move them. Each commit fsyncs its pages."""
    import sqlite3

    from bench.append import Workload, run_ours
    from events.store import open_store

    def frames(path: Any) -> int:
        return int(path.with_name(path.name + "-wal").stat().st_size // (4096 + 24))

    out = []
    for per, n in ((1, 200), (100, 2000)):
        w, ours, bare = (
            Workload(seed=11, n_events=n),
            d / f"wal-ours-{per}.sqlite",
            d / "wal-bare.sqlite",
        )
        rm_sqlite(ours)
        rm_sqlite(bare)
        store = open_store(f"sqlite:///{ours}", upgrade=True)
        store.engine.dispose()
        store._writers.get().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store._writers.get().execute("PRAGMA wal_autocheckpoint=0")
        run_ours(store, w, per)
        mine = frames(ours)
        store.close()
        c = sqlite3.connect(str(bare), isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "wal_autocheckpoint=0"):
            c.execute(f"PRAGMA {pragma}")
        c.execute("CREATE TABLE bare (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for bodies in w.bodies:
            for i in range(0, len(bodies), per):
                c.execute("BEGIN")
                c.executemany(
                    "INSERT INTO bare (body) VALUES (?)", [(b,) for b in bodies[i : i + per]]
                )
                c.execute("COMMIT")
        theirs = frames(bare)
        c.close()
        out.append(
            f"{per} event(s) per transaction: ours {mine / (n // per):.1f}, "
            f"bare insert {theirs / (n // per):.1f} WAL pages per commit"
        )
    return out


def main() -> None:
    from events import migrate

    revision = sys.argv[1] if len(sys.argv) > 1 else migrate.HEAD
    backends: list[tuple[str, str]] = []
    with scratch_dir("plans") as d:
        db = d / "plans.sqlite"
        rm_sqlite(db)
        backends.append(("SQLite", f"sqlite:///{db}"))
        name = "orch_bench_plans"
        if pg_available():
            backends.append(("PostgreSQL", pg_recreate(name)))
        try:
            for backend, url in backends:
                print(f"\n## {backend}, revision {revision}\n")
                for query, lines in plans(url, revision).items():
                    print(f"{query}:")
                    for line in lines:
                        print(f"    {line}")
            if revision == migrate.HEAD:
                print("\n## SQLite WAL pages per commit (this code, head schema)\n")
                for line in wal_pages(d):
                    print(line)
        finally:
            if len(backends) > 1:
                pg_drop(name)


if __name__ == "__main__":
    main()

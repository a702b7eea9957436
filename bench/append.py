"""Durable append: ours vs the `eventsourcing` library's recorders vs a bare insert.

Each contender writes the same realistic session events (streams of 100: a
SessionStarted, steps of TurnStarted / ToolCallRequested / PermissionDecided /
ToolCallStarted / FileChanged / ToolCallCompleted with 0.2-2 KB of output /
TurnCompleted, and a SessionCompleted), one event per transaction and 100 per
transaction, on SQLite (WAL, synchronous=FULL: every commit fsynced) and on
PostgreSQL (synchronous_commit=on, the server default).

- ours: `SqlEventStore.append(stream, batch, expected_seq)` with `NewEvent`s
  built beforehand (as a caller has them) and an idempotency key per append,
  as `orchestrator.run.runner` appends. Timed: everything `append` does
  (envelope dump, canonical JSON, sha256 chain, the one guarded INSERT ...
  RETURNING that checks head, seq and key in the database (`events.heads`),
  commit, building the stored events it returns). The store knows each
  head here (it wrote it, or the stream is new), as a worker does for the
  sessions it runs. "ours, head read" forgets every head first, so each
  append also reads the head and the key (one more round trip): what a
  worker's first append to a session another process wrote costs.
  "ours, no key" is "ours" without an idempotency key.
  "ours, sealed" is "ours" with payload sealing on (`events.sealing.Sealer`:
  FileChanged diffs and tool output AES-GCM encrypted under the stream's data
  key, made on the stream's first append, in the timed region).
- eventsourcing: `SQLiteApplicationRecorder` / `PostgresApplicationRecorder`
  `.insert_events([StoredEvent...])` (the recorders with a global order, like
  our `position`), with `StoredEvent.state` = our canonical bytes of the same
  event (same size). Its SQLite connections get `PRAGMA synchronous=FULL` (set
  explicitly; it is also this build's default) and it sets WAL itself. It does
  no chaining, no concurrency check beyond its primary key, and no idempotency
  lookup: it is the lower-work peer.
- bare insert (the floor): sqlite3 / psycopg inserting the same sealed bodies
  (our canonical bytes) into a bare table `(id integer primary key, body)`,
  a single-row INSERT per event (`executemany`: one pipelined batch on
  PostgreSQL), one commit per transaction, with the same
  durability (WAL + synchronous=FULL; PostgreSQL's default synchronous_commit):
  what the disk and the driver cost with no framework, no chain, no index and
  no check. Nothing of ours runs in it, so "ours" can only come within some
  fraction of it, never beat it by doing its own work twice.
- bare insert, our row (reference, no target): the same bare insert into our
  table, its columns and indexes (`events.schema`; on PostgreSQL made by our
  migrations in a database of its own), the key on a transaction's first and
  last rows as ours writes it, values computed beforehand: what our row and
  its indexes cost apart from our CPU.

Contenders run interleaved, round by round (5 rounds, 3 with `--quick`),
each round on fresh SQLite files and in an order rotated by one (`rotated`:
PostgreSQL's WAL and checkpoints are shared, so a fixed order would always
seat the same contender behind the heaviest writer); the figure is the
median of the rounds. Each timed region starts right after a
`gc.collect()`: otherwise objects a contender's setup allocated (ours re-keys
its NewEvents just before the timer) leave a pending full collection of the
whole bench heap (70 ms measured, 14 us an event at 5,000 events) that lands in
whichever timed region crosses the threshold. Collections a contender's own
work causes are still timed.
"""

from __future__ import annotations

import gc
import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    PG_HOST,
    PG_PORT,
    PG_SUFFIX,
    PG_USER,
    Options,
    Result,
    median,
    new_events,
    now,
    pg_available,
    pg_drop,
    pg_recreate,
    rm_sqlite,
    scratch_dir,
    session_payloads,
    show,
    x,
)

STREAM_LEN = 100
TOPIC = "bench.domain:SessionEvent"


# -- the workload -----------------------------------------------------------------


class Workload:
    """One round's events, prepared outside the timed region for every contender."""

    def __init__(self, seed: int, n_events: int) -> None:
        from events.envelope import genesis_hash, seal

        rng = random.Random(seed)
        n_streams = max(1, n_events // STREAM_LEN)
        self.streams: list[tuple[str, list[Any]]] = []  # ours: (stream_id, NewEvents)
        self.bodies: list[list[bytes]] = []  # the floor: our canonical bytes
        self.stored: list[list[Any]] = []  # eventsourcing: StoredEvents
        self.rows: list[list[tuple[Any, ...]]] = []  # the floor with our row: its columns
        from eventsourcing.persistence import StoredEvent

        size = 0
        for s in range(n_streams):
            sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            news = new_events(session_payloads(rng, sid, STREAM_LEN), start=s * STREAM_LEN)
            self.streams.append((sid, news))
            sealed = seal(sid, news, 0, genesis_hash(sid))
            bodies = [body for _, body, _ in sealed]
            size += sum(len(b) for b in bodies)
            self.bodies.append(bodies)
            prevs = [genesis_hash(sid), *(h for _, _, h in sealed[:-1])]
            self.rows.append(
                [
                    (sid, seq, e.event_id, e.type, e.correlation_id, prev, h, body)
                    for e, (seq, body, h), prev in zip(news, sealed, prevs, strict=True)
                ]
            )
            self.stored.append(
                [
                    StoredEvent(
                        originator_id=uuid.UUID(sid), originator_version=i, topic=TOPIC, state=b
                    )
                    for i, b in enumerate(bodies, start=1)
                ]
            )
        self.n = n_streams * STREAM_LEN
        self.mean_bytes = size / self.n


# -- contenders -------------------------------------------------------------------


def run_ours(
    store: Any, w: Workload, per_txn: int, keyed: bool = True, forget: bool = False
) -> float:
    from events.envelope import NewEvent

    # Keys are per append, as the runner's (`step:N:start`...). Re-key outside the timer.
    jobs = []
    for sid, news in w.streams:
        for i in range(0, len(news), per_txn):
            chunk = news[i : i + per_txn]
            if keyed:
                key = f"step:{i}"
                chunk = [
                    NewEvent.model_construct(**{**dict(e), "idempotency_key": key}) for e in chunk
                ]
            jobs.append((sid, chunk, i))
    gc.collect()  # start every contender with no collector debt from the setup
    t = now()
    if forget:
        heads = store._heads
        for sid, chunk, seq in jobs:
            heads.clear()  # the head is not known: append reads it (and the key)
            store.append(sid, chunk, seq)
    else:
        for sid, chunk, seq in jobs:
            store.append(sid, chunk, seq)
    return w.n / (now() - t)


def run_es(recorder: Any, w: Workload, per_txn: int) -> float:
    jobs = [stored[i : i + per_txn] for stored in w.stored for i in range(0, len(stored), per_txn)]
    gc.collect()  # start every contender with no collector debt from the setup
    t = now()
    for chunk in jobs:
        recorder.insert_events(chunk)
    return w.n / (now() - t)


def _bodies(w: Workload, per_txn: int) -> list[list[bytes]]:
    """The floor's transactions: the same canonical bodies ours stores."""
    return [b[i : i + per_txn] for b in w.bodies for i in range(0, len(b), per_txn)]


def _sqlite_floor(path: Path, ins: str, jobs: Sequence[Iterable[tuple[Any, ...]]], n: int) -> float:
    """Events/s of `jobs` (each one transaction's rows for `ins`) on a fresh
    sqlite3 connection with our durability: WAL, synchronous=FULL."""
    import sqlite3

    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    gc.collect()  # start every contender with no collector debt from the setup
    t = now()
    for rows in jobs:
        conn.execute("BEGIN")
        conn.executemany(ins, rows)
        conn.execute("COMMIT")
    rate = n / (now() - t)
    conn.close()
    return rate


def run_floor_sqlite(path: Path, w: Workload, per_txn: int) -> float:
    import sqlite3

    with sqlite3.connect(str(path)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bare (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    conn.close()
    # Each transaction's row tuples are made inside the timer, as a script would.
    jobs = [((body,) for body in chunk) for chunk in _bodies(w, per_txn)]
    return _sqlite_floor(path, "INSERT INTO bare (body) VALUES (?)", jobs, w.n)


def _our_rows(w: Workload, per_txn: int) -> list[list[tuple[Any, ...]]]:
    """Each transaction's rows of our table, computed beforehand, the key on
    its first and last rows as ours writes it."""
    jobs = []
    for rows in w.rows:
        for i in range(0, len(rows), per_txn):
            chunk, key = rows[i : i + per_txn], f"step:{i}"
            jobs.append(
                [(*r, key if k in (0, len(chunk) - 1) else None) for k, r in enumerate(chunk)]
            )
    return jobs


OUR_INSERT = (
    "INSERT INTO events (stream_id, seq, event_id, type, correlation_id, prev_hash, hash,"
    " body, idempotency_key) VALUES ({0}, {0}, {0}, {0}, {0}, {0}, {0}, {0}, {0})"
)


def run_floor_sqlite_our_row(path: Path, w: Workload, per_txn: int) -> float:
    """The bare insert into our table (`events.schema`: its columns, the
    UNIQUE(stream_id, seq), key and correlation indexes), the key on each
    transaction's first and last rows as ours writes it: what our row and
    indexes cost the disk and SQLite, with none of our CPU (no sealing, no
    chain, no guard, no events built)."""
    import sqlalchemy as sa

    from events.schema import events

    engine = sa.create_engine(f"sqlite:///{path}")
    events.create(engine)
    engine.dispose()
    return _sqlite_floor(path, OUR_INSERT.format("?"), _our_rows(w, per_txn), w.n)


def run_floor_pg(url: str, w: Workload, per_txn: int) -> float:
    conn = _pg_conn(url)
    conn.execute("CREATE TABLE IF NOT EXISTS bare (id bigserial PRIMARY KEY, body bytea NOT NULL)")
    conn.commit()
    # Each transaction's row tuples are made inside the timer, as a script would.
    jobs = [((body,) for body in chunk) for chunk in _bodies(w, per_txn)]
    return _pg_floor(conn, "INSERT INTO bare (body) VALUES (%s)", jobs, w.n)


def run_floor_pg_our_row(url: str, w: Workload, per_txn: int) -> float:
    """The PostgreSQL floor writing our table (made by our migrations, in the
    database ours does not use): `run_floor_sqlite_our_row`'s reference."""
    return _pg_floor(_pg_conn(url), OUR_INSERT.format("%s"), _our_rows(w, per_txn), w.n)


def _pg_conn(url: str) -> Any:
    import psycopg

    return psycopg.connect(url)


def _pg_floor(conn: Any, ins: str, jobs: Sequence[Iterable[tuple[Any, ...]]], n: int) -> float:
    """Events/s of `jobs` (each one transaction's rows for `ins`): one
    pipelined `executemany` and a commit per transaction."""
    gc.collect()  # start every contender with no collector debt from the setup
    t = now()
    with conn.cursor() as cur:
        for rows in jobs:
            cur.executemany(ins, rows)  # one pipeline
            conn.commit()
    rate = n / (now() - t)
    conn.close()
    return rate


def _es_sqlite(path: Path) -> Any:
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    ds = SQLiteDatastore(str(path))
    create = ds.pool._create_connection

    def durable() -> Any:  # same durability as ours: fsync every commit
        c = create()
        c._sqlite_conn.execute("PRAGMA synchronous=FULL")
        return c

    ds.pool._create_connection = durable  # type: ignore[method-assign]
    rec = SQLiteApplicationRecorder(ds)
    rec.create_table()
    return rec


def _es_pg(db: str) -> Any:
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

    # The database pg_recreate made: its name carries BENCH_PG_SUFFIX.
    ds = PostgresDatastore(db + PG_SUFFIX, PG_HOST, PG_PORT, PG_USER, "")
    rec = PostgresApplicationRecorder(ds)
    rec.create_table()
    return rec


# -- the bench --------------------------------------------------------------------

DURABILITY = {
    "sqlite": "WAL, synchronous=FULL (every commit fsynced), all contenders",
    "postgresql": "server defaults (fsync=on, synchronous_commit=on), all contenders",
}
CONTENDERS = (
    "ours",
    "ours, head read",
    "ours, no key",
    "ours, sealed",
    "eventsourcing",
    "bare insert",
)
# Reference (no target): the floor writing our row and indexes.
OUR_ROW = "bare insert, our row"

OURS = ("ours", "ours, head read", "ours, no key", "ours, sealed")


def rotated(names: Sequence[str], r: int) -> list[str]:
    """The contenders in round `r`'s order: each round starts one further
    along, so none always runs first on a fresh file or right after the
    heaviest writer (PostgreSQL's WAL and checkpoints are shared by all)."""
    k = r % len(names)
    return [*names[k:], *names[:k]]


def _open_ours(name: str, url: str) -> Any:
    """Our store; "ours, sealed" seals with a throwaway key-encryption key."""
    import os

    from events.keyring import SqlKeyRing
    from events.sealing import Sealer
    from events.store import open_store
    from orchestrator.audit.kek import FileKek

    if name != "ours, sealed":
        return open_store(url, upgrade=True)
    return open_store(
        url, upgrade=True, filters=[Sealer(SqlKeyRing(url, FileKek(os.urandom(32), "bench")))]
    )


def _run_ours(name: str, store: Any, w: Workload, per_txn: int) -> float:
    return run_ours(
        store, w, per_txn, keyed=name != "ours, no key", forget=name == "ours, head read"
    )


def bench_sqlite(
    w_for: Callable[[int], Workload], per_txn: int, n_rounds: int
) -> dict[str, list[float]]:

    out: dict[str, list[float]] = {k: [] for k in (*CONTENDERS, OUR_ROW)}
    with scratch_dir("append") as d:
        for r in range(n_rounds):
            w = w_for(r)
            for name in rotated(list(out), r):
                db = d / f"{name.replace(' ', '_').replace(',', '')}-{r}.sqlite"
                rm_sqlite(db)
                if name == "eventsourcing":
                    rec = _es_sqlite(db)
                    out[name].append(run_es(rec, w, per_txn))
                    rec.datastore.close()
                    continue
                if name == "bare insert":
                    out[name].append(run_floor_sqlite(db, w, per_txn))
                elif name == OUR_ROW:
                    out[name].append(run_floor_sqlite_our_row(db, w, per_txn))
                else:
                    store = _open_ours(name, f"sqlite:///{db}")
                    out[name].append(_run_ours(name, store, w, per_txn))
                    store.close()
                rm_sqlite(db)
    return out


def bench_pg(
    w_for: Callable[[int], Workload], per_txn: int, n_rounds: int
) -> dict[str, list[float]]:

    dbs = {
        "ours": "orch_bench_ours",
        "ours, head read": "orch_bench_ours_read",
        "ours, no key": "orch_bench_ours_nokey",
        "ours, sealed": "orch_bench_ours_sealed",
        "eventsourcing": "orch_bench_es",
        "bare insert": "orch_bench_raw",
        OUR_ROW: "orch_bench_raw_our_row",
    }
    out: dict[str, list[float]] = {k: [] for k in (*CONTENDERS, OUR_ROW)}
    try:
        urls = {k: pg_recreate(db) for k, db in dbs.items()}
        stores = {k: _open_ours(k, urls[k]) for k in OURS}
        _open_ours(OUR_ROW, urls[OUR_ROW]).close()  # our migrations make its table
        rec = _es_pg(urls["eventsourcing"].rsplit("/", 1)[1])  # with BENCH_PG_SUFFIX
        for r in range(n_rounds):
            w = w_for(r)
            for name in rotated(list(out), r):
                if name == "eventsourcing":
                    out[name].append(run_es(rec, w, per_txn))
                elif name == "bare insert":
                    out[name].append(run_floor_pg(urls[name], w, per_txn))
                elif name == OUR_ROW:
                    out[name].append(run_floor_pg_our_row(urls[name], w, per_txn))
                else:
                    out[name].append(_run_ours(name, stores[name], w, per_txn))
        for s in stores.values():
            s.close()
        rec.datastore.close()
    finally:
        for db in dbs.values():
            pg_drop(db)
    return out


def run(opts: Options) -> Result:
    res = Result("append")
    n_rounds = 3 if opts.quick else 5
    sizes = {1: 500 if opts.quick else 2000, 100: 5000 if opts.quick else 20000}
    cache: dict[tuple[int, int], Workload] = {}

    def workload(per_txn: int) -> Callable[[int], Workload]:
        def get(r: int) -> Workload:
            # Fresh event ids every round (PostgreSQL databases persist across rounds).
            key = (per_txn, r)
            if key not in cache:
                cache.clear()
                cache[key] = Workload(seed=1000 * per_txn + r, n_events=sizes[per_txn])
            return cache[key]

        return get

    backends: list[tuple[str, Callable[..., dict[str, list[float]]]]] = [("sqlite", bench_sqlite)]
    if pg_available():
        backends.append(("postgresql", bench_pg))
    else:
        res.notes.append("PostgreSQL unreachable: its rows are missing")
    rows = []
    for backend, fn in backends:
        for per_txn in (1, 100):
            samples = fn(workload(per_txn), per_txn, n_rounds)
            mean_bytes = cache[next(iter(cache))].mean_bytes
            med = {k: median(v) for k, v in samples.items()}
            label = f"{backend}, {per_txn}/txn"
            durability = DURABILITY[backend]
            res.figures[label] = {
                "durability": durability,
                "events_per_s": med,
                "samples": samples,
                "events": sizes[per_txn],
                "rounds": n_rounds,
                "mean_event_bytes": round(mean_bytes),
            }
            show(
                f"[append] {label}: {sizes[per_txn]:,} events x {n_rounds} rounds, "
                f"mean body {mean_bytes:,.0f} B (median of rounds); durability: {durability}",
                ("contender", "events/s", "us/event", "ours / this", "min..max events/s"),
                [
                    (
                        k,
                        med[k],
                        1e6 / med[k],
                        x(med["ours"] / med[k]),
                        f"{min(v):,.0f}..{max(v):,.0f}",
                    )
                    for k, v in samples.items()
                ],
            )
            rows.append(
                (
                    label,
                    med["ours"],
                    med["eventsourcing"],
                    med["bare insert"],
                    x(med["ours"] / med["eventsourcing"]),
                    x(med["ours"] / med["bare insert"]),
                )
            )
            r_es = med["ours"] / med["eventsourcing"]
            r_floor = med["ours"] / med["bare insert"]
            res.target(f"{label}: ours vs eventsourcing", ">= 1.30x", x(r_es), r_es >= 1.3)
            res.target(
                f"{label}: ours vs bare insert",
                ">= 0.85x (within 15%)",
                x(r_floor),
                r_floor >= 0.85,
            )
    show(
        "[append] summary (events/s; ratio = ours / peer, > 1 means ours is faster)",
        (
            "backend, events per transaction",
            "ours",
            "eventsourcing",
            "bare insert",
            "ours/es",
            "ours/bare",
        ),
        rows,
    )
    res.print_targets()
    return res

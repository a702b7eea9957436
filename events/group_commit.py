"""Group commit: several streams' batches appended in ONE transaction (one
COMMIT and its fsync for all of them), for a chunk of sessions that step
together (`orchestrator.run.chunk`). Each batch is checked exactly as
`SqlEventStore.append` checks one: its idempotency key, its expected seq,
the hash chain; all or nothing.

On PostgreSQL the group costs four round trips whatever its size (BEGIN, one
read of every stream's head and every key's rows, one INSERT of every row
as arrays, COMMIT) instead of two per stream; SQLite, in-process, reads and
inserts stream by stream in its BEGIN IMMEDIATE."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any, Protocol

from events.appending import APPEND_HOOKS, Batch, Reconnect
from events.db import WriterConnections, driver_errors
from events.envelope import Event, NewEvent, genesis_hash, placed, seal
from events.errors import SequenceConflict
from events.heads import Heads
from events.inserts import HEADS_AND_KEYS, MANY, Inserts, many_params

__all__ = ["append_many"]


class _Store(Protocol):
    """The parts of `SqlEventStore` a group commit uses."""

    url: str
    filters: tuple[Any, ...]
    _writers: WriterConnections
    _heads: Heads
    _inserts: Inserts

    def _filtered(self, stream_id: str, batch: Batch) -> tuple[list[NewEvent], list[NewEvent]]: ...
    def _decode(self, position: int, body: bytes, hash_: str) -> Event: ...
    def _fresh_connection(self) -> Any: ...
    def _failed(
        self, conn: Any, cur: Any, explicit: bool, wrote: bool, exc: BaseException
    ) -> None: ...
    def _head_or_key(
        self, cur: Any, stream_id: str, key: str | None
    ) -> tuple[tuple[int, str] | None, list[Event]]: ...
    def _insert(self, cur: Any, params: tuple[object, ...]) -> dict[int, int]: ...


def append_many(store: _Store, items: Sequence[tuple[str, Batch, int | None]]) -> list[list[Event]]:
    """Group commit: append several batches, of one stream or several, in
    ONE transaction (one COMMIT and its fsync for all of them).

    Each item is `append`'s (stream id, batch, expected seq) and is checked
    as `append` checks it: its own idempotency key (a key stored before
    returns those events and writes nothing for that item) and its
    expected seq against the stream's head as the items before it left
    it. All or nothing: a SequenceConflict on any item stores none of
    them. Returns the stored events of each item, in order."""
    work: list[tuple[str, Batch, int | None, str | None, Batch]] = []
    for f in store.filters:  # e.g. the sealer makes the group's new data keys at once
        prepare = getattr(f, "prepare", None)
        if prepare is not None:
            prepare([(stream_id, batch) for stream_id, batch, _ in items])
    for stream_id, batch, expected in items:
        key = batch[0].idempotency_key if batch else None
        if any(e.idempotency_key != key for e in batch):
            raise ValueError("all events of one append must share its idempotency key")
        shown = batch
        if store.filters and batch:
            batch, shown = store._filtered(stream_id, batch)
        work.append((stream_id, batch, expected, key, shown))
    dbapi = store._writers.dbapi
    started = time.perf_counter()
    with driver_errors(store.url, dbapi):
        for attempt in range(3):
            try:
                out = _transaction(store, work)
                break
            except Reconnect:
                continue
            except dbapi.IntegrityError as exc:
                # Another writer placed a seq between our read and insert
                # (PostgreSQL, autocommit reads): read again; a duplicate
                # delivery is then an idempotent hit, a real move a conflict.
                if attempt == 2:
                    raise SequenceConflict(work[0][0], -1, -1) from exc
        else:
            out = _transaction(store, work)
    if APPEND_HOOKS:
        per = (time.perf_counter() - started) / max(1, len(work))
        for (stream_id, batch, *_), stored in zip(work, out):
            n = len(stored) if stored and stored[0].event_id == batch[0].event_id else 0
            for hook in APPEND_HOOKS:
                hook(stream_id, n, per)
    return out


def _transaction(
    store: _Store, work: Sequence[tuple[str, Batch, int | None, str | None, Batch]]
) -> list[list[Event]]:
    """`append_many` in one explicit transaction on this thread's writer."""
    if store._inserts.arrays:
        return _arrays_transaction(store, work)
    w = store._writers
    conn = store._fresh_connection()
    cur = conn.cursor()
    wrote = False
    out: list[list[Event]] = []
    advanced: list[tuple[str, int, str]] = []  # the heads to remember once committed
    try:
        cur.execute(w.begin_sql())
        for stream_id, batch, expected_seq, key, shown in work:
            if not batch:
                out.append([])
                continue
            head, stored = store._head_or_key(cur, stream_id, key)
            if key is not None and stored:
                out.append(stored)
                continue
            last_seq, prev = (head[0], head[1]) if head else (0, genesis_hash(stream_id))
            if expected_seq is not None and expected_seq != last_seq:
                raise SequenceConflict(stream_id, expected_seq, last_seq)
            sealed = seal(stream_id, batch, last_seq, prev)  # type: ignore[arg-type]
            wrote = True
            positions = store._insert(
                cur, store._inserts.params(stream_id, batch, sealed, key, prev)
            )
            out.append(placed(stream_id, shown, sealed, prev, positions))
            advanced.append((stream_id, sealed[-1][0], sealed[-1][2]))
        cur.execute("COMMIT")
    except BaseException as exc:
        store._failed(conn, cur, True, wrote, exc)
        raise
    finally:
        with contextlib.suppress(Exception):
            cur.close()
    for stream_id, seq, hash_ in advanced:  # the next append needs no head read
        store._heads.put(stream_id, seq, hash_)
    return out


def _arrays_transaction(
    store: _Store, work: Sequence[tuple[str, Batch, int | None, str | None, Batch]]
) -> list[list[Event]]:
    """`_transaction` on PostgreSQL: the heads and keys of the whole group in
    one SELECT, then its rows in one INSERT (`events.inserts.MANY`). The
    checks are `_transaction`'s, item by item in order: an item sees the head
    and the keys the items before it left."""
    w = store._writers
    conn = store._fresh_connection()
    cur = conn.cursor()
    wrote = False
    out: list[list[Event]] = [[] for _ in work]
    rows: list[tuple[str, Batch, list[tuple[int, bytes, str]], str | None, str]] = []
    at: list[tuple[int, Batch]] = []  # per row group: its item, and what readers see
    again: dict[int, int] = {}  # item -> the earlier item of this group with its key
    try:
        cur.execute(w.begin_sql())
        heads, keyed = _heads_and_keys(store, cur, work)
        mine: dict[tuple[str, str], int] = {}
        for i, (stream_id, batch, expected_seq, key, shown) in enumerate(work):
            if not batch:
                continue
            if key is not None and (stream_id, key) in keyed:
                out[i] = keyed[(stream_id, key)]
                continue
            if key is not None and (stream_id, key) in mine:
                again[i] = mine[(stream_id, key)]
                continue
            last_seq, prev = heads.get(stream_id) or (0, genesis_hash(stream_id))
            if expected_seq is not None and expected_seq != last_seq:
                raise SequenceConflict(stream_id, expected_seq, last_seq)
            sealed = seal(stream_id, batch, last_seq, prev)  # type: ignore[arg-type]
            heads[stream_id] = (sealed[-1][0], sealed[-1][2])
            rows.append((stream_id, batch, sealed, key, prev))
            at.append((i, shown))
            if key is not None:
                mine[(stream_id, key)] = i
        positions: dict[tuple[str, int], int] = {}
        if rows:
            wrote = True
            cur.execute(MANY, many_params(rows))
            positions = {(sid, seq): pos for pos, sid, seq in cur.fetchall()}
        cur.execute("COMMIT")
    except BaseException as exc:
        store._failed(conn, cur, True, wrote, exc)
        raise
    finally:
        with contextlib.suppress(Exception):
            cur.close()
    for (i, shown), (stream_id, _, sealed, _, prev) in zip(at, rows):
        where = {seq: positions[(stream_id, seq)] for seq, _, _ in sealed}
        out[i] = placed(stream_id, shown, sealed, prev, where)
    for i, j in again.items():
        out[i] = out[j]
    for stream_id, (seq, hash_) in heads.items():  # the next append needs no head read
        store._heads.put(stream_id, seq, hash_)
    return out


def _heads_and_keys(
    store: _Store, cur: Any, work: Sequence[tuple[str, Batch, int | None, str | None, Batch]]
) -> tuple[dict[str, tuple[int, str]], dict[tuple[str, str], list[Event]]]:
    """Every stream's head (seq, hash) and the events already stored under
    each item's key (an idempotent hit: in seq order), in one round trip."""
    streams = list(dict.fromkeys(sid for sid, batch, *_ in work if batch))
    keys = list(dict.fromkeys((sid, key) for sid, batch, _, key, _ in work if batch and key))
    cur.execute(HEADS_AND_KEYS, (streams, [k[0] for k in keys], [k[1] for k in keys]))
    heads: dict[str, tuple[int, str]] = {}
    hits: dict[tuple[str, str], list[tuple[int, int, str, bytes]]] = {}
    for sid, seq, hash_, pos, body, key in cur.fetchall():
        if pos is None:
            heads[sid] = (seq, hash_)
        else:
            hits.setdefault((sid, key), []).append((seq, pos, hash_, body))
    keyed = {
        k: [store._decode(pos, bytes(body), h) for _, pos, h, body in sorted(found)]
        for k, found in hits.items()
    }
    return heads, keyed

"""The append-only event store.

One SQLAlchemy implementation serves SQLite (embedded default) and PostgreSQL.
Optimistic concurrency comes from the database: UNIQUE(stream_id, seq) means
two writers cannot both place seq n+1, and the loser gets `SequenceConflict`.
There is no update or delete path, and triggers refuse them in the database.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import orjson
import sqlalchemy as sa

from events import group_commit, migrate
from events.appending import APPEND_HOOKS, INSERT_CHUNK, Batch, Reconnect
from events.db import (
    WriterConnections,
    create_engine,
    driver_errors,
    normalize_url,
    store_errors,
    writer,
)
from events.envelope import Event, NewEvent, genesis_hash, placed, seal
from events.errors import SequenceConflict
from events.heads import Heads
from events.inserts import KEY_ROWS, Inserts
from events.reader import row_batches
from events.schema import INDEXED_TYPES, INDEXED_TYPES_SQL
from events.schema import events as T
from events.schema import snapshots as S
from events.sealing import MARK
from events.tails import split_tails, tails_sql
from events.upcast import decode
from events.verify import Row

PAGE = 2000
INDEXED = frozenset(INDEXED_TYPES)
EventFilter = Callable[[str, NewEvent], NewEvent]
"""A step every event passes before it is sealed: (stream id, event) -> the
event to store (masking, payload encryption). It returns the same object when
it has nothing to change; the store applies filters in order.

A filter that also has `reveal(record) -> record` (`events.sealing.Sealer`)
changes what is stored but not what readers see: the store opens every body
it reads with it, and the events `append` returns are the filter's input.
Such a filter comes last."""


class EventStore(Protocol):
    def append(
        self, stream_id: str, batch: Sequence[NewEvent], expected_seq: int | None
    ) -> list[Event]:
        """Append `batch` atomically after `expected_seq` (the last seq the caller
        saw; 0 for a new stream, None for "wherever the stream ends").

        Raises SequenceConflict if the stream moved on. If the batch's
        idempotency key was stored before, returns those events instead."""
        ...

    def append_many(
        self, items: Sequence[tuple[str, Sequence[NewEvent], int | None]]
    ) -> list[list[Event]]:
        """Several `append`s (stream id, batch, expected seq) in one transaction:
        all stored or none; each returns what `append` would."""
        ...

    def read_stream(self, stream_id: str, after_seq: int = 0) -> Iterator[Event]: ...

    def read_tails(self, tails: Sequence[tuple[str, int]]) -> list[list[Event]]: ...

    def read_all(self, after_position: int = 0) -> Iterator[Event]: ...

    def read_types(self, types: Sequence[str], after_position: int = 0) -> Iterator[Event]: ...

    def read_correlation(self, correlation_id: str, after_position: int = 0) -> Iterator[Event]: ...

    def last_seq(self, stream_id: str) -> int: ...

    def raw_stream(self, stream_id: str, after_seq: int = 0) -> list[tuple[int, bytes, str]]: ...

    def loads(self, body: bytes) -> dict[str, Any]:
        """A stored body as JSON data, sealed fields opened where keys exist."""
        ...

    def rows(self, stream_id: str | None = None) -> Iterator[Row]:
        """Stored rows exactly as written, for verification."""
        ...

    def heads(
        self, after_position: int = 0, stream_ids: Sequence[str] | None = None
    ) -> dict[str, tuple[int, str, int]]: ...

    def stream_ids(self) -> list[str]: ...

    def load_snapshot(self, stream_id: str) -> tuple[int, int, bytes] | None: ...

    def save_snapshot(self, stream_id: str, seq: int, version: int, state: bytes) -> None: ...

    def close(self) -> None: ...


class SqlEventStore:
    def __init__(
        self, url: str, *, check_schema: bool = True, filters: Sequence[EventFilter] = ()
    ) -> None:
        self.url = normalize_url(url)
        self.filters = tuple(filters)  # fixed for the store's life (reads depend on them)
        self._reveals: tuple[Callable[[dict[str, Any]], dict[str, Any]], ...] = tuple(
            f.reveal for f in self.filters if hasattr(f, "reveal")
        )
        self.engine = create_engine(self.url)
        self._writers = WriterConnections(self.engine)
        p = self._writers.param()
        self._sql_head = (
            "SELECT seq, hash FROM events WHERE stream_id = " + p + " ORDER BY seq DESC LIMIT 1"
        )
        # The head and, if the key was seen before, its rows, in one round trip
        # (head rows have no position; a key's rows come with their bodies).
        self._sql_key_rows = KEY_ROWS.format(p=p)
        self._sql_head_or_key = (
            "SELECT seq, hash, NULL, NULL FROM (SELECT seq, hash FROM events WHERE stream_id = "
            + p
            + " ORDER BY seq DESC LIMIT 1) AS head UNION ALL "
            + self._sql_key_rows
        )
        self._sql_stream = (
            "SELECT position, body, hash FROM events WHERE stream_id = "
            + p
            + " AND seq > "
            + p
            + " ORDER BY seq"
        )
        self._sql_snapshot = "SELECT seq, version, state FROM snapshots WHERE stream_id = " + p
        self._inserts = Inserts(self._writers.dialect)
        self._binary = self.engine.dialect.name == "postgresql"  # results of _own_query
        self._heads = Heads()
        if check_schema:
            migrate.check(self.engine)

    def close(self) -> None:
        self._heads.clear()
        self._writers.close()
        self.engine.dispose()

    # -- writing -----------------------------------------------------------

    def append(
        self, stream_id: str, batch: Sequence[NewEvent], expected_seq: int | None
    ) -> list[Event]:
        if not batch:
            return []
        key = batch[0].idempotency_key
        if any(e.idempotency_key != key for e in batch):
            raise ValueError("all events of one append must share its idempotency key")
        shown = batch
        if self.filters:
            batch, shown = self._filtered(stream_id, batch)
        if not APPEND_HOOKS:
            return self._append_keyed(stream_id, batch, expected_seq, key, shown)
        started = time.perf_counter()
        stored = self._append_keyed(stream_id, batch, expected_seq, key, shown)
        elapsed = time.perf_counter() - started
        n = len(stored) if stored and stored[0].event_id == batch[0].event_id else 0
        for hook in APPEND_HOOKS:
            hook(stream_id, n, elapsed)
        return stored

    def append_many(self, items: Sequence[tuple[str, Batch, int | None]]) -> list[list[Event]]:
        """Several streams' batches in ONE transaction (`events.group_commit`)."""
        return group_commit.append_many(self, items)

    def _filtered(self, stream_id: str, batch: Batch) -> tuple[list[NewEvent], list[NewEvent]]:
        """(what to store, what readers will see): the latter is each event as
        it entered the first filter that has a `reveal`."""
        stored, shown = [], []
        for e in batch:
            seen = None
            for f in self.filters:
                if seen is None and hasattr(f, "reveal"):
                    seen = e
                e = f(stream_id, e)
            stored.append(e)
            shown.append(e if seen is None else seen)
        return stored, shown

    def _decode(self, position: int, body: bytes, hash_: str) -> Event:
        return decode(position, body, hash_, self._reveal if self._reveals else None)

    def _reveal(self, record: dict[str, Any]) -> dict[str, Any]:
        for reveal in self._reveals:
            record = reveal(record)
        return record

    def loads(self, body: bytes) -> dict[str, Any]:
        """A stored body as JSON data, its sealed fields opened (or marked as
        forgotten) when this store has the keys."""
        record = orjson.loads(body)
        if self._reveals and MARK in body:
            return self._reveal(record)
        return record  # type: ignore[no-any-return]

    def body_loads(self) -> Callable[[bytes], dict[str, Any]]:
        """`loads` as the cheapest callable for this store: orjson's own when
        no filter opens sealed fields (for a loop over many bodies)."""
        return self.loads if self._reveals else orjson.loads

    def _append_keyed(
        self, stream_id: str, batch: Batch, expected_seq: int | None, key: str | None, shown: Batch
    ) -> list[Event]:
        dbapi = self._writers.dbapi
        try:
            with driver_errors(self.url, dbapi):
                try:
                    return self._append(stream_id, batch, expected_seq, shown)
                except Reconnect:
                    # The server dropped our idle connection before we sent a
                    # write (pool_pre_ping's job, without its round trip per
                    # append): nothing happened, so try once on a new one.
                    return self._append(stream_id, batch, expected_seq, shown)
        except dbapi.IntegrityError as exc:
            # Lost a race for the same seq: either a duplicate delivery of this
            # very batch (same key, now stored) or a real conflict.
            if key is not None:
                stored = self._by_key(stream_id, key)
                if stored:
                    return stored
            raise SequenceConflict(
                stream_id,
                expected_seq if expected_seq is not None else -1,
                self.last_seq(stream_id),
            ) from exc

    def _by_key(self, stream_id: str, key: str) -> list[Event]:
        """The events stored under `key` (after losing a race to their writer)."""
        with store_errors(self.url), self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                self._sql_key_rows, (stream_id, stream_id, key, stream_id, key)
            ).all()
        return [self._decode(r[2], bytes(r[3]), r[1]) for r in sorted(rows)]

    def _append(
        self, stream_id: str, batch: Batch, expected_seq: int | None, shown: Batch
    ) -> list[Event]:
        """The hot path, on this thread's own DBAPI connection with fixed SQL texts
        (the drivers cache and, on PostgreSQL, prepare them).

        When the head is known (remembered from this store's last write or read
        of the stream, or seq 0 for `expected_seq=0`): one guarded INSERT (with
        RETURNING on PostgreSQL), one round trip, its own transaction
        (`events.heads`). Else,
        or when that inserted nothing: `_append_read`."""
        head = self._known_head(stream_id, expected_seq, len(batch), batch[0].idempotency_key)
        if head is not None:
            stored = self._insert_after(stream_id, batch, head)
            if stored is not None:
                sealed, positions = stored
                return placed(stream_id, shown, sealed, head[1], positions)
            self._heads.forget(stream_id)
        return self._append_read(stream_id, batch, expected_seq, shown)

    def _known_head(
        self, stream_id: str, expected_seq: int | None, n: int, key: str | None
    ) -> tuple[int, str] | None:
        if n > INSERT_CHUNK or (key is None and expected_seq is None):
            # Unkeyed and unchecked: nothing would stop a retry after a link
            # lost mid-INSERT from storing the batch twice; the read path
            # fails before it writes, or raises without retrying.
            return None
        if expected_seq == 0:
            return 0, genesis_hash(stream_id)
        head = self._heads.get(stream_id)
        if head is None or (expected_seq is not None and expected_seq != head[0]):
            return None  # a caller behind may be a redelivery: the read path decides
        return head

    def _insert_after(
        self, stream_id: str, batch: Batch, head: tuple[int, str]
    ) -> tuple[list[tuple[int, bytes, str]], dict[int, int]] | None:
        """Seal `batch` after `head` and insert it guarded; None when the
        database refused the head (moved on, not there, or the key is stored)."""
        w, key = self._writers, batch[0].idempotency_key
        last_seq, prev = head
        sealed = seal(stream_id, batch, last_seq, prev)  # type: ignore[arg-type]
        params = self._inserts.params(stream_id, batch, sealed, key, prev)
        if last_seq > 0:
            params += (stream_id, last_seq, prev)
        if key is not None:
            params += (stream_id, key)
        sql = self._inserts.sql(len(batch), last_seq > 0, key is not None)
        conn = self._fresh_connection()
        cur = conn.cursor()
        try:
            cur.execute(sql, params)
            positions = self._inserts.positions(cur, params)
        except w.dbapi.IntegrityError:
            return None  # UNIQUE(stream_id, seq): someone placed seq n+1 first
        except BaseException as exc:
            if self._rollback(conn, cur, False) and isinstance(exc, w.dbapi.OperationalError):
                # The link died during the INSERT: maybe before it ran (an idle
                # connection the server dropped), maybe after its commit. Once
                # more cannot store a second copy (`_known_head`): the key
                # returns the first, or the expected seq makes it a conflict.
                raise Reconnect from exc
            raise
        finally:
            with contextlib.suppress(Exception):
                cur.close()
        if not positions:
            return None
        self._heads.put(stream_id, sealed[-1][0], sealed[-1][2])
        return sealed, positions

    def _head_or_key(
        self, cur: Any, stream_id: str, key: str | None
    ) -> tuple[tuple[int, str] | None, list[Event]]:
        """The stream's head (seq, hash), and the events already stored under
        `key` (an idempotent hit: in seq order), in one round trip."""
        cur.execute(self._sql_head_or_key, (stream_id, stream_id, stream_id, key, stream_id, key))
        head, stored = None, []
        for row in cur.fetchall():
            if row[2] is None:
                head = (row[0], row[1])
            else:
                stored.append(row)
        stored.sort()
        return head, [self._decode(pos, bytes(body), hash_) for _, hash_, pos, body in stored]

    def _insert(self, cur: Any, params: tuple[object, ...]) -> dict[int, int]:
        """Insert a batch's parameters (`events.inserts`); each stored seq's position."""
        positions: dict[int, int] = {}
        for sql, chunk in self._inserts.chunks(params):
            cur.execute(sql, chunk)
            positions.update(self._inserts.positions(cur, chunk))
        return positions

    def _append_read(
        self, stream_id: str, batch: Batch, expected_seq: int | None, shown: Batch
    ) -> list[Event]:
        """Read the head (and the rows of `key`, if it was seen), then INSERT.

        Round trips: one SELECT (head, and the rows of `key` if it was seen) and
        one multi-row INSERT (RETURNING on PostgreSQL; `Inserts.positions`).
        On PostgreSQL they run in autocommit:
        a read-committed transaction around them would add BEGIN and COMMIT and
        lock nothing, so the INSERT (atomic by itself) hitting UNIQUE(stream_id,
        seq) is what catches a writer that moved the head in between, exactly as
        it would inside a transaction. SQLite wraps them in BEGIN IMMEDIATE
        (cheap in-process; serializes writers). A batch too big for one INSERT
        takes an explicit transaction on both."""
        w, key = self._writers, batch[0].idempotency_key
        conn = self._fresh_connection()
        cur = conn.cursor()
        explicit = w.dialect == "sqlite" or len(batch) > INSERT_CHUNK
        wrote = False
        try:
            if explicit:
                cur.execute(w.begin_sql())
            if key is None:
                cur.execute(self._sql_head, (stream_id,))
                head = cur.fetchone()
            else:
                head, stored = self._head_or_key(cur, stream_id, key)
                if stored:
                    if explicit:
                        cur.execute("COMMIT")
                    return stored
            last_seq, prev = (head[0], head[1]) if head else (0, genesis_hash(stream_id))
            if expected_seq is not None and expected_seq != last_seq:
                raise SequenceConflict(stream_id, expected_seq, last_seq)
            sealed = seal(stream_id, batch, last_seq, prev)  # type: ignore[arg-type]
            wrote = bool(batch)
            positions = self._insert(cur, self._inserts.params(stream_id, batch, sealed, key, prev))
            if explicit:
                cur.execute("COMMIT")
        except BaseException as exc:
            self._failed(conn, cur, explicit, wrote, exc)
            raise
        finally:
            # The rollback may have closed a broken connection (SQLite's
            # "disk full" among them): closing its cursor then raises, and
            # must not hide the error that broke it.
            with contextlib.suppress(Exception):
                cur.close()
        self._heads.put(stream_id, sealed[-1][0], sealed[-1][2])
        return placed(stream_id, shown, sealed, prev, positions)

    def _fresh_connection(self) -> Any:  # a DB-API connection of the dialect's driver
        """This thread's writer, replaced first if the server dropped it (the
        job `pool_pre_ping` did for pooled connections, without its round trip)."""
        conn = self._writers.get()
        if getattr(conn, "closed", False) or getattr(conn, "broken", False):
            self._writers.discard()
            conn = self._writers.get()
        return conn

    def _failed(self, conn, cur, explicit: bool, wrote: bool, exc: BaseException) -> None:  # type: ignore[no-untyped-def]
        """After a failed write transaction: roll back, and raise Reconnect when
        the connection died before anything was written (once more is safe);
        else the caller re-raises `exc`."""
        broken = self._rollback(conn, cur, explicit)
        if broken and not wrote and isinstance(exc, self._writers.dbapi.OperationalError):
            raise Reconnect from exc

    def _rollback(self, conn, cur, explicit: bool) -> bool:  # type: ignore[no-untyped-def]
        """Leave the connection idle after a failure, or drop it if it cannot be
        (returns True then)."""
        try:
            if explicit:
                cur.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - the original error is what matters
            self._writers.discard()
            return True
        if getattr(conn, "closed", False) or getattr(conn, "broken", False):
            self._writers.discard()
            return True
        return False

    # -- reading -----------------------------------------------------------

    def last_seq(self, stream_id: str) -> int:
        with store_errors(self.url), self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.coalesce(sa.func.max(T.c.seq), 0)).where(
                        T.c.stream_id == stream_id
                    )
                ).scalar_one()
            )

    def read_stream(self, stream_id: str, after_seq: int = 0) -> Iterator[Event]:
        for position, body, hash_ in self.raw_stream(stream_id, after_seq):
            yield self._decode(position, body, hash_)

    def raw_stream(self, stream_id: str, after_seq: int = 0) -> list[tuple[int, bytes, str]]:
        """A stream's rows after `after_seq`, on this thread's own connection
        (autocommit on PostgreSQL): one round trip. Every task reads its
        session's tail; through the pool that was four (pre-ping, BEGIN,
        SELECT, ROLLBACK), 0.9 ms against 0.14 ms (bench/README.md, agent)."""
        dbapi = self._writers.dbapi
        with driver_errors(self.url, dbapi):
            try:
                return self._raw_stream(stream_id, after_seq)
            except Reconnect:
                return self._raw_stream(stream_id, after_seq)

    def _raw_stream(self, stream_id: str, after_seq: int) -> list[tuple[int, bytes, str]]:
        rows: list[tuple[int, bytes, str]] = self._own_query(
            self._sql_stream, (stream_id, after_seq)
        )
        if rows:  # seqs are gapless: a hint for the next append (events.heads)
            self._heads.put(stream_id, after_seq + len(rows), rows[-1][2])
        return rows

    def read_tails(self, tails: Sequence[tuple[str, int]]) -> list[list[Event]]:
        """`read_stream` of each (stream, after_seq), in one query (`events.tails`)."""
        sql, params = tails_sql(len(tails), self._writers.param()), sum(tails, ())
        with driver_errors(self.url, self._writers.dbapi):
            try:
                found = self._own_query(sql, params) if tails else []
            except Reconnect:
                found = self._own_query(sql, params)
        out = split_tails(found, len(tails))
        for (stream_id, after_seq), got in zip(tails, out):
            if got:  # seqs are gapless: a hint for the next append (events.heads)
                self._heads.put(stream_id, after_seq + len(got), got[-1][2])
        return [[self._decode(*row) for row in got] for got in out]

    def _own_query(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        """Rows of one query on this thread's writer connection (autocommit on
        PostgreSQL); `Reconnect` when it was dead before the query ran. Results
        come in PostgreSQL's binary format: a body as its bytes, not as hex text
        twice its size to decode (a 10,000-event stream read in 60% less CPU)."""
        conn = self._fresh_connection()
        cur = conn.cursor()
        try:
            if self._binary:
                cur.execute(sql, params, binary=True)
            else:
                cur.execute(sql, params)
            return list(cur.fetchall())
        except BaseException as exc:
            if self._rollback(conn, cur, False) and isinstance(
                exc, self._writers.dbapi.OperationalError
            ):
                raise Reconnect from exc
            raise
        finally:
            with contextlib.suppress(Exception):
                cur.close()

    def read_all(self, after_position: int = 0) -> Iterator[Event]:
        for position, body, hash_ in self.raw_all(after_position):
            yield self._decode(position, body, hash_)

    def raw_all(
        self,
        after_position: int = 0,
        correlation_id: str | None = None,
        types: Sequence[str] | None = None,
    ) -> Iterator[tuple[int, bytes, str]]:
        """Stored rows in position order, a page at a time (bodies as stored);
        only one job's, or only events of `types`, when given."""
        if types is not None and not types:
            return
        while True:
            q = sa.select(T.c.position, T.c.body, T.c.hash).where(T.c.position > after_position)
            if correlation_id is not None:
                q = q.where(T.c.correlation_id == correlation_id)
            if types is not None:
                q = q.where(T.c.type.in_(types))
                if set(types) <= INDEXED:  # the partial index's own clause, word for word
                    q = q.where(INDEXED_TYPES_SQL)
            with store_errors(self.url), self.engine.connect() as conn:
                page = conn.execute(q.order_by(T.c.position).limit(PAGE)).all()
            if not page:
                return
            for row in page:
                yield row[0], bytes(row[1]), row[2]
            after_position = page[-1][0]

    def read_types(self, types: Sequence[str], after_position: int = 0) -> Iterator[Event]:
        """Every event of the given types, in position order: an index range per
        type (ix_events_type_position) for `events.schema.INDEXED_TYPES`, a
        scan in position order for any other."""
        for position, body, hash_ in self.raw_all(after_position, types=types):
            yield self._decode(position, body, hash_)

    def read_correlation(self, correlation_id: str, after_position: int = 0) -> Iterator[Event]:
        """Every event of one job (all its streams), in position order."""
        for position, body, hash_ in self.raw_all(after_position, correlation_id):
            yield self._decode(position, body, hash_)

    def rows(self, stream_id: str | None = None) -> Iterator[Row]:
        """Stored rows exactly as written (columns and hashed bytes), for verify:
        read in large batches of driver tuples (`events.reader`)."""
        for batch in row_batches(self.engine, self.url, stream_id):
            for r in batch:
                yield Row(r[0], r[1], r[2], r[3], r[4], bytes(r[5]))

    def raw_stream_rows(self, stream_id: str) -> Iterator[tuple[int, bytes, str]]:
        for r in self.rows(stream_id):
            yield r.position or 0, r.body, r.hash

    def heads(
        self, after_position: int = 0, stream_ids: Sequence[str] | None = None
    ) -> dict[str, tuple[int, str, int]]:
        """The last (seq, hash, position) of every stream with an event after
        `after_position`, or of each of `stream_ids`: what a digest signs, in
        one GROUP BY over the position key (or the (stream_id, seq) index),
        without reading any body."""
        if stream_ids is not None and not stream_ids:
            return {}
        last = sa.select(T.c.stream_id, sa.func.max(T.c.seq).label("seq")).where(
            T.c.position > after_position
        )
        if stream_ids is not None:
            last = last.where(T.c.stream_id.in_(stream_ids))
        sub = last.group_by(T.c.stream_id).subquery()
        q = sa.select(T.c.stream_id, T.c.seq, T.c.hash, T.c.position).join(
            sub, sa.and_(T.c.stream_id == sub.c.stream_id, T.c.seq == sub.c.seq)
        )
        with store_errors(self.url), self.engine.connect() as conn:
            return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(q)}

    def stream_ids(self) -> list[str]:
        with store_errors(self.url), self.engine.connect() as conn:
            return list(conn.execute(sa.select(T.c.stream_id).distinct()).scalars())

    # -- snapshots (derived data: may be replaced, never trusted over events) --

    def load_snapshot(self, stream_id: str) -> tuple[int, int, bytes] | None:
        """On this thread's own connection, like `raw_stream`: one round trip
        (a pool checkout adds pre-ping, BEGIN and ROLLBACK: three more)."""
        dbapi = self._writers.dbapi
        with driver_errors(self.url, dbapi):
            try:
                found = self._own_query(self._sql_snapshot, (stream_id,))
            except Reconnect:
                found = self._own_query(self._sql_snapshot, (stream_id,))
        if not found:
            return None
        row = found[0]
        state: bytes | None = bytes(row[2])
        for f in self.filters:
            if state is not None and hasattr(f, "open_blob"):
                state = f.open_blob(stream_id, state)
        return (row[0], row[1], state) if state is not None else None

    def save_snapshot(self, stream_id: str, seq: int, version: int, state: bytes) -> None:
        """Replace the stream's snapshot (sealed like its payloads when a filter
        seals) unless it is newer and of this version: one that replay ignored
        is replaced, at its own seq too."""
        for f in self.filters:
            if hasattr(f, "seal_blob"):
                state = f.seal_blob(stream_id, state)
        dialect = self.engine.dialect.name
        from sqlalchemy.dialects import postgresql, sqlite

        insert: Any = sqlite.insert if dialect == "sqlite" else postgresql.insert
        stmt = insert(S).values(stream_id=stream_id, seq=seq, version=version, state=state)
        stmt = stmt.on_conflict_do_update(
            index_elements=[S.c.stream_id],
            set_={"seq": seq, "version": version, "state": state},
            where=(S.c.seq <= seq) | (S.c.version != version),
        )
        with store_errors(self.url), writer(self.engine) as conn, conn.begin():
            conn.execute(stmt)


def open_store(
    url: str, *, upgrade: bool = False, filters: Sequence[EventFilter] = ()
) -> SqlEventStore:
    """Open a store; with `upgrade`, apply pending migrations first (embedded use).
    `filters` see every appended event (`orchestrator.audit.protect.event_filters`)."""
    if upgrade:
        store = SqlEventStore(url, check_schema=False, filters=filters)
        migrate.upgrade(store.engine)
        migrate.check(store.engine)
        return store
    return SqlEventStore(url, filters=filters)

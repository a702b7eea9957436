"""The append-only event store.

One SQLAlchemy implementation serves SQLite (embedded default) and PostgreSQL.
Optimistic concurrency comes from the database: UNIQUE(stream_id, seq) means
two writers cannot both place seq n+1, and the loser gets `SequenceConflict`.
There is no update or delete path, and triggers refuse them in the database.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import sqlalchemy as sa

from events import migrate
from events.db import create_engine, normalize_url, store_errors, writer
from events.envelope import Event, NewEvent, genesis_hash, seal
from events.errors import SequenceConflict
from events.schema import events as T
from events.schema import snapshots as S
from events.upcast import decode
from events.verify import Row

PAGE = 2000


class EventStore(Protocol):
    def append(self, stream_id: str, batch: Sequence[NewEvent],
               expected_seq: int | None) -> list[Event]:
        """Append `batch` atomically after `expected_seq` (the last seq the caller
        saw; 0 for a new stream, None for "wherever the stream ends").

        Raises SequenceConflict if the stream moved on. If the batch's
        idempotency key was stored before, returns those events instead."""
        ...

    def read_stream(self, stream_id: str, after_seq: int = 0) -> Iterator[Event]: ...

    def read_all(self, after_position: int = 0) -> Iterator[Event]: ...


class SqlEventStore:
    def __init__(self, url: str, *, check_schema: bool = True) -> None:
        self.url = normalize_url(url)
        self.engine = create_engine(self.url)
        if check_schema:
            migrate.check(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- writing -----------------------------------------------------------

    def append(self, stream_id: str, batch: Sequence[NewEvent],
               expected_seq: int | None) -> list[Event]:
        if not batch:
            return []
        key = batch[0].idempotency_key
        if any(e.idempotency_key != key for e in batch):
            raise ValueError("all events of one append must share its idempotency key")
        try:
            with store_errors(self.url), writer(self.engine) as conn, conn.begin():
                if key is not None:
                    stored = self._by_key(conn, stream_id, key)
                    if stored:
                        return stored
                row = conn.execute(
                    sa.select(T.c.seq, T.c.hash).where(T.c.stream_id == stream_id)
                    .order_by(T.c.seq.desc()).limit(1)).first()
                last_seq, prev = (row[0], row[1]) if row else (0, genesis_hash(stream_id))
                if expected_seq is not None and expected_seq != last_seq:
                    raise SequenceConflict(stream_id, expected_seq, last_seq)
                rows, before = [], prev
                for e, (seq, body, digest) in zip(batch, seal(stream_id, batch, last_seq, prev)):
                    rows.append({"stream_id": stream_id, "seq": seq, "event_id": e.event_id,
                                 "type": e.type, "correlation_id": e.correlation_id,
                                 "idempotency_key": key, "prev_hash": before, "hash": digest,
                                 "body": body})
                    before = digest
                positions = conn.execute(
                    sa.insert(T).returning(T.c.position, sort_by_parameter_order=True),
                    rows).scalars().all()
        except sa.exc.IntegrityError as exc:
            # Lost a race for the same seq: either a duplicate delivery of this
            # very batch (same key, now stored) or a real conflict.
            if key is not None:
                with writer(self.engine) as conn:
                    stored = self._by_key(conn, stream_id, key)
                if stored:
                    return stored
            raise SequenceConflict(stream_id, expected_seq if expected_seq is not None else -1,
                                   self.last_seq(stream_id)) from exc
        return [decode(p, r["body"], r["hash"]) for p, r in zip(positions, rows)]

    def _by_key(self, conn: sa.Connection, stream_id: str, key: str) -> list[Event]:
        result = conn.execute(
            sa.select(T.c.position, T.c.body, T.c.hash)
            .where(T.c.stream_id == stream_id, T.c.idempotency_key == key)
            .order_by(T.c.seq))
        return [decode(*r) for r in result]

    # -- reading -----------------------------------------------------------

    def last_seq(self, stream_id: str) -> int:
        with store_errors(self.url), self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.coalesce(sa.func.max(T.c.seq), 0))
                                .where(T.c.stream_id == stream_id)).scalar_one()

    def read_stream(self, stream_id: str, after_seq: int = 0) -> Iterator[Event]:
        for position, body, hash_ in self.raw_stream(stream_id, after_seq):
            yield decode(position, body, hash_)

    def raw_stream(self, stream_id: str, after_seq: int = 0) -> list[tuple[int, bytes, str]]:
        with store_errors(self.url), self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(  # type: ignore[misc]
                sa.select(T.c.position, T.c.body, T.c.hash)
                .where(T.c.stream_id == stream_id, T.c.seq > after_seq).order_by(T.c.seq))]

    def read_all(self, after_position: int = 0) -> Iterator[Event]:
        for position, body, hash_ in self.raw_all(after_position):
            yield decode(position, body, hash_)

    def raw_all(self, after_position: int = 0,
                correlation_id: str | None = None) -> Iterator[tuple[int, bytes, str]]:
        """Stored rows in position order, a page at a time (bodies as stored)."""
        while True:
            q = sa.select(T.c.position, T.c.body, T.c.hash).where(T.c.position > after_position)
            if correlation_id is not None:
                q = q.where(T.c.correlation_id == correlation_id)
            with store_errors(self.url), self.engine.connect() as conn:
                page = conn.execute(q.order_by(T.c.position).limit(PAGE)).all()
            if not page:
                return
            for row in page:
                yield row[0], bytes(row[1]), row[2]
            after_position = page[-1][0]

    def read_correlation(self, correlation_id: str, after_position: int = 0) -> Iterator[Event]:
        """Every event of one job (all its streams), in position order."""
        for position, body, hash_ in self.raw_all(after_position, correlation_id):
            yield decode(position, body, hash_)

    def rows(self, stream_id: str | None = None) -> Iterator[Row]:
        """Stored rows exactly as written (columns and hashed bytes), for verify."""
        cols = (T.c.position, T.c.stream_id, T.c.seq, T.c.prev_hash, T.c.hash, T.c.body)
        after = 0
        while True:
            q = sa.select(*cols).where(T.c.position > after)
            if stream_id is not None:
                q = q.where(T.c.stream_id == stream_id)
            with store_errors(self.url), self.engine.connect() as conn:
                page = conn.execute(q.order_by(T.c.position).limit(PAGE)).all()
            if not page:
                return
            for r in page:
                yield Row(r[0], r[1], r[2], r[3], r[4], bytes(r[5]))
            after = page[-1][0]

    def raw_stream_rows(self, stream_id: str) -> Iterator[tuple[int, bytes, str]]:
        for r in self.rows(stream_id):
            yield r.position or 0, r.body, r.hash

    def stream_ids(self) -> list[str]:
        with store_errors(self.url), self.engine.connect() as conn:
            return list(conn.execute(sa.select(T.c.stream_id).distinct()).scalars())

    # -- snapshots (derived data: may be replaced, never trusted over events) --

    def load_snapshot(self, stream_id: str) -> tuple[int, int, bytes] | None:
        with store_errors(self.url), self.engine.connect() as conn:
            row = conn.execute(sa.select(S.c.seq, S.c.version, S.c.state)
                               .where(S.c.stream_id == stream_id)).first()
        return (row[0], row[1], bytes(row[2])) if row else None

    def save_snapshot(self, stream_id: str, seq: int, version: int, state: bytes) -> None:
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(S).values(stream_id=stream_id, seq=seq, version=version, state=state)
        stmt = stmt.on_conflict_do_update(
            index_elements=[S.c.stream_id],
            set_={"seq": seq, "version": version, "state": state},
            where=S.c.seq < seq)
        with store_errors(self.url), writer(self.engine) as conn, conn.begin():
            conn.execute(stmt)


def open_store(url: str, *, upgrade: bool = False) -> SqlEventStore:
    """Open a store; with `upgrade`, apply pending migrations first (embedded use)."""
    if upgrade:
        store = SqlEventStore(url, check_schema=False)
        migrate.upgrade(store.engine)
        migrate.check(store.engine)
        return store
    return SqlEventStore(url)

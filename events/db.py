"""Engines for the two backends, their quirks in small named functions, and the
one place that translates driver errors into `events.errors`."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url

from events import pgarrays
from events.errors import AppendOnlyViolation, StoreUnavailable
from events.urls import normalize_url as normalize_url  # where callers have found it


def display_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def create_engine(url: str) -> sa.Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _sqlite_engine(url: str) -> sa.Engine:
    db = make_url(url).database
    if db and db != ":memory:":
        Path(db).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # Let us issue BEGIN ourselves (pysqlite's own handling defers it).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: every committed append is fsynced (durable), not just at checkpoint.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # Writers take the write lock up front: two deferred transactions that
        # both read then write would otherwise deadlock into SQLITE_BUSY.
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def writer(engine: sa.Engine) -> sa.Connection:
    """A connection whose transactions take the write lock first on SQLite."""
    return engine.connect().execution_options(sqlite_immediate=True)


class WriterConnections:
    """One DBAPI connection per (process, thread) for the append hot path.

    A pool checkout per append costs more than the append's own SQL (and on
    PostgreSQL `pool_pre_ping` adds a round trip), so each writing thread
    keeps a connection of its own, made by the engine (its "connect" hooks
    set the PRAGMAs once). On PostgreSQL it is in autocommit mode: every
    statement is its own transaction unless the caller says BEGIN.

    After a fork the child never touches, closes or garbage-collects the
    parent's connection (closing would break the parent's session or locks);
    it parks it and opens its own."""

    _inherited: list[Any] = []  # parents' connections, kept alive, never used

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.dbapi: Any = engine.dialect.loaded_dbapi
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[tuple[int, weakref.ref[Any]]] = []
        self._generation = 0  # bumped by close(): every thread then reopens

    def get(self) -> Any:
        """This thread's DBAPI connection (opened on first use)."""
        held = getattr(self._local, "held", None)
        if held is not None and held[0] == os.getpid() and held[3] == self._generation:
            return held[2]
        if held is not None and held[0] != os.getpid():
            WriterConnections._inherited.append(held[1])
        fairy = self.engine.raw_connection()
        fairy.detach()  # ours now: the pool neither resets nor recycles it
        dbapi_conn = fairy.dbapi_connection
        assert dbapi_conn is not None  # None only once invalidated; this one is fresh
        if self.dialect == "postgresql":
            dbapi_conn.autocommit = True
            pgarrays.register(dbapi_conn, self.dbapi)  # the append's array parameters
        self._local.held = (os.getpid(), fairy, dbapi_conn, self._generation)
        with self._lock:
            # Weakly: a finished thread's connection goes (and closes) with its
            # thread-local slot instead of piling up here until close().
            self._open = [(p, r) for p, r in self._open if r() is not None]
            self._open.append((os.getpid(), weakref.ref(fairy)))
        return dbapi_conn

    def discard(self) -> None:
        """Drop this thread's connection (after a driver error left it unusable)."""
        held = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None and held[0] == os.getpid():
            with self._lock:
                self._open = [(p, r) for p, r in self._open if r() is not held[1]]
            with contextlib.suppress(Exception):
                held[2].close()  # the driver's own close: no pool reset of a dead link

    def close(self) -> None:
        """Close every connection this process opened (any thread's)."""
        with self._lock:
            mine = [r() for p, r in self._open if p == os.getpid()]
            self._open = []
            self._generation += 1
        for fairy in mine:
            if fairy is not None:
                with contextlib.suppress(Exception):
                    fairy.dbapi_connection.close()

    def param(self) -> str:
        return "?" if self.dialect == "sqlite" else "%s"

    def begin_sql(self) -> str:
        # SQLite: take the write lock up front (a read-then-write transaction
        # would otherwise deadlock into SQLITE_BUSY). PostgreSQL: plain BEGIN.
        return "BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN"


@contextlib.contextmanager
def driver_errors(url: str, dbapi: Any) -> Iterator[None]:
    """`store_errors` for raw DBAPI calls. IntegrityError passes through untouched:
    the store turns UNIQUE(stream_id, seq) into SequenceConflict itself."""
    try:
        yield
    except dbapi.IntegrityError:
        raise
    except dbapi.Error as exc:
        text = str(exc)
        if "append-only" in text:
            raise AppendOnlyViolation(text.splitlines()[0]) from exc
        if isinstance(exc, (dbapi.OperationalError, dbapi.InterfaceError)):
            raise StoreUnavailable(display_url(url), exc) from exc
        raise


@contextlib.contextmanager
def store_errors(url: str) -> Iterator[None]:
    """Translate driver errors: unreachable -> StoreUnavailable, trigger -> AppendOnlyViolation."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        text = str(exc.orig) if exc.orig is not None else str(exc)
        if "append-only" in text:
            raise AppendOnlyViolation(text.splitlines()[0]) from exc
        if isinstance(exc, sa.exc.OperationalError) or exc.connection_invalidated:
            raise StoreUnavailable(display_url(url), exc.orig or exc) from exc
        raise

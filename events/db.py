"""Engines for the two backends, their quirks in small named functions, and the
one place that translates driver errors into `events.errors`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url

from events.errors import AppendOnlyViolation, StoreUnavailable


def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here; a bare path means SQLite."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


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

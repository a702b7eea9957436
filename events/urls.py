"""Store URLs as text, without SQLAlchemy: the short forms the settings
accept, the file of an SQLite URL, and the libpq form of a PostgreSQL one.

`events.db` builds engines from them; `events.quickread` (`orchestrator
status`, whose start-up stays under `celery --help`'s) and the disk checks
of `orchestrator.ops.storage` read them without loading SQLAlchemy.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

_SQLITE = ("sqlite://", "sqlite+pysqlite://")
_POSTGRES = "postgresql+psycopg://"


def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here; a bare path means SQLite."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    if url.startswith(("postgresql://", "postgres://")):
        return _POSTGRES + url.split("://", 1)[1]
    return url


def sqlite_path(url: str) -> Path | None:
    """The database file of an SQLite URL or bare path (None for a server
    store or memory), as SQLAlchemy's `make_url(url).database` names it."""
    if "://" not in url:
        return Path(url).expanduser()
    if not url.startswith(_SQLITE):
        return None
    rest = url.split("://", 1)[1]
    db = unquote(rest[1:].partition("?")[0]) if rest.startswith("/") else ""
    return Path(db) if db and db != ":memory:" else None


def libpq_url(url: str) -> str | None:
    """A normalized PostgreSQL URL as libpq (psycopg) takes it, or None for
    another store."""
    if not url.startswith(_POSTGRES):
        return None
    return "postgresql://" + url[len(_POSTGRES) :]

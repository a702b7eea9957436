"""Data keys in the store's `data_keys` table, wrapped by a key-encryption key
(KEK) the database does not hold.

A stream gets its data key on its first sealed field. The table keeps only
the wrapped key and which KEK wrapped it; forgetting a stream clears the
wrapped key (the only copy: it is never logged, exported or snapshotted) and
records who and why, so readers show "forgotten on DATE by WHO: REASON".
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from events.db import create_engine, normalize_url, store_errors, writer
from events.schema import data_keys as K
from events.schema import snapshots as S
from events.sealing import (
    CACHE_S,
    Forgotten,
    Kek,
    remember,
    stored_key,
    unwrap_key,
)
from events.sealing import WrongKek as WrongKek  # where callers have found it


@dataclass(frozen=True)
class KeyRow:
    key_id: str
    scope: str
    kek_id: str
    live: bool
    created_at: str
    forgotten: Forgotten | None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class SqlKeyRing:
    """`events.sealing.KeyRing` over the `data_keys` table of the store at `url`."""

    def __init__(self, url: str, kek: Kek) -> None:
        self.url = normalize_url(url)
        self.kek = kek
        self._engine: sa.Engine | None = None
        self._lock = threading.Lock()
        self._active: dict[str, tuple[float, str, bytes]] = {}

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = create_engine(self.url)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def active(self, scope: str) -> tuple[str, bytes]:
        now = time.monotonic()
        hit = self._active.get(scope)
        if hit is not None and now - hit[0] < CACHE_S:
            return hit[1], hit[2]
        with self._lock:
            with store_errors(self.url), self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(K.c.key_id, K.c.kek_id, K.c.wrapped)
                    .where(K.c.scope == scope, K.c.wrapped.is_not(None))
                    .order_by(K.c.created_at.desc(), K.c.key_id)
                    .limit(1)
                ).first()
            if row is not None:
                key_id, dek = row[0], unwrap_key(self.kek, row[0], row[1], bytes(row[2]))
            else:
                key_id, dek = uuid.uuid4().hex, os.urandom(32)
                with store_errors(self.url), writer(self.engine) as conn, conn.begin():
                    conn.execute(
                        K.insert().values(
                            key_id=key_id,
                            scope=scope,
                            kek_id=self.kek.id,
                            wrapped=self.kek.wrap(dek),
                            created_at=_now(),
                        )
                    )
            remember(self._active, scope, (now, key_id, dek))
            return key_id, dek

    def prepare(self, scopes: Iterable[str]) -> None:
        """The active keys of many scopes, found or made at once: the keys that
        do not exist yet are stored in ONE transaction (a chunk of new sessions
        otherwise makes one fsynced transaction each, 9 ms apiece on SQLite).
        Picks what `active` would pick: the newest live key of each scope."""
        now = time.monotonic()
        todo = [
            s
            for s in dict.fromkeys(scopes)
            if (hit := self._active.get(s)) is None or now - hit[0] >= CACHE_S
        ]
        if not todo:
            return
        with self._lock:
            with store_errors(self.url), self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(K.c.scope, K.c.key_id, K.c.kek_id, K.c.wrapped, K.c.created_at)
                    .where(K.c.scope.in_(todo), K.c.wrapped.is_not(None))
                    .order_by(K.c.created_at.desc(), K.c.key_id)
                ).all()
            found: dict[str, tuple[str, bytes]] = {}
            for scope, key_id, kek_id, wrapped, _ in rows:
                if scope not in found:
                    found[scope] = (key_id, unwrap_key(self.kek, key_id, kek_id, bytes(wrapped)))
            made = [(s, uuid.uuid4().hex, os.urandom(32)) for s in todo if s not in found]
            if made:
                with store_errors(self.url), writer(self.engine) as conn, conn.begin():
                    conn.execute(
                        K.insert(),
                        [
                            {
                                "key_id": key_id,
                                "scope": scope,
                                "kek_id": self.kek.id,
                                "wrapped": self.kek.wrap(dek),
                                "created_at": _now(),
                            }
                            for scope, key_id, dek in made
                        ],
                    )
                found.update((scope, (key_id, dek)) for scope, key_id, dek in made)
            for scope, (key_id, dek) in found.items():
                remember(self._active, scope, (now, key_id, dek))

    def lookup(self, key_id: str) -> bytes | Forgotten | None:
        with store_errors(self.url), self.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    K.c.kek_id,
                    K.c.wrapped,
                    K.c.forgotten_at,
                    K.c.forgotten_by,
                    K.c.forgotten_reason,
                ).where(K.c.key_id == key_id)
            ).first()
        return None if row is None else stored_key(self.kek, key_id, tuple(row))

    def rows(self, scope: str | None = None) -> list[KeyRow]:
        q = sa.select(
            K.c.key_id,
            K.c.scope,
            K.c.kek_id,
            K.c.wrapped.is_not(None),
            K.c.created_at,
            K.c.forgotten_at,
            K.c.forgotten_by,
            K.c.forgotten_reason,
        ).order_by(K.c.created_at, K.c.key_id)
        if scope is not None:
            q = q.where(K.c.scope == scope)
        with store_errors(self.url), self.engine.connect() as conn:
            return [
                KeyRow(
                    r[0],
                    r[1],
                    r[2],
                    bool(r[3]),
                    r[4],
                    None if r[3] else Forgotten(r[5] or "", r[6] or "", r[7] or ""),
                )
                for r in conn.execute(q)
            ]

    def forget(self, scope: str, by: str, reason: str) -> list[str]:
        """Destroy every live data key of `scope` (and the stream's snapshot,
        which holds projected plaintext); returns the key ids destroyed."""
        at = _now()
        with store_errors(self.url), writer(self.engine) as conn, conn.begin():
            if self.engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA secure_delete=ON")  # overwrite freed bytes
            ids = list(
                conn.execute(
                    sa.select(K.c.key_id).where(K.c.scope == scope, K.c.wrapped.is_not(None))
                ).scalars()
            )
            conn.execute(
                K.update()
                .where(K.c.key_id.in_(ids))
                .values(wrapped=None, forgotten_at=at, forgotten_by=by, forgotten_reason=reason)
            )
            conn.execute(S.delete().where(S.c.stream_id == scope))
        if self.engine.dialect.name == "sqlite":
            # The old page stays in the write-ahead log until a checkpoint.
            raw = self.engine.raw_connection()
            try:
                raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
            finally:
                raw.close()
        self._active.pop(scope, None)
        return ids

    def rewrap(self, old: Kek) -> int:
        """Wrap every live data key of `old` with this ring's KEK (key rotation);
        returns how many moved."""
        moved = 0
        with store_errors(self.url), writer(self.engine) as conn, conn.begin():
            rows = conn.execute(
                sa.select(K.c.key_id, K.c.wrapped).where(
                    K.c.kek_id == old.id, K.c.wrapped.is_not(None)
                )
            ).all()
            for key_id, wrapped in rows:
                dek = old.unwrap(bytes(wrapped))
                conn.execute(
                    K.update()
                    .where(K.c.key_id == key_id)
                    .values(kek_id=self.kek.id, wrapped=self.kek.wrap(dek))
                )
                moved += 1
        return moved

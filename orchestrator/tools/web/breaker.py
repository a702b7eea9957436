"""Circuit breakers per destination host, shared by every worker.

pybreaker does the state machine (closed -> open after `fail_max`
consecutive failures -> half-open once `reset_timeout` has passed -> closed
on a successful probe, open again on a failed one); its state lives where
every worker sees it:

- on a Redis broker, in Redis (`pybreaker.CircuitRedisStorage`, keys
  `pybreaker:orch:breaker:<host>:*`);
- in the embedded default, in `state_dir/breakers.sqlite` (`SqliteStorage`
  below: one row per host, counters incremented in SQL so concurrent worker
  processes never lose a failure).

A call to an open circuit fails fast with `CircuitOpen`, which says when a
probe will be let through. Every transition a worker makes or notices is
handed to `on_change`; `record_transition` turns it into one `CircuitChanged`
event on the host's `circuit:<host>` stream (a worker that notices a
transition another already recorded appends nothing) and a metric.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pybreaker
import redis

from events import payloads as p
from events.envelope import NewEvent
from events.errors import SequenceConflict
from orchestrator.errors import ToolError

__all__ = [
    "Breakers",
    "CircuitOpen",
    "SqliteStorage",
    "HostFailure",
    "record_transition",
    "breakers_for",
]

T = TypeVar("T")
Change = Callable[[str, str, str, int, "datetime | None"], None]


class HostFailure(Exception):
    """A response that counts against the host's circuit (429, 5xx) though
    the request itself went through; `response` is kept for the caller."""

    def __init__(self, reason: str, response: Any = None) -> None:
        super().__init__(reason)
        self.reason, self.response = reason, response


class CircuitOpen(ToolError):
    """The host's circuit is open: the request was not sent."""

    transient = True

    def __init__(self, host: str, retry_at: datetime | None, failures: int) -> None:
        when = (
            f"at {retry_at.isoformat(timespec='seconds')} (in "
            f"{max(0.0, (retry_at - datetime.now(UTC)).total_seconds()):.0f} s)"
            if retry_at
            else "after the reset timeout"
        )
        super().__init__(
            f"{host} failed {failures or 'too many'} time(s) in a row, so its circuit is "
            f"open and requests to it fail fast; one probe will be let through {when}, "
            "and a success closes the circuit. Retry then, or raise "
            "ORCH_BREAKER_FAILURE_THRESHOLD if the host is only slow"
        )
        self.host, self.retry_at = host, retry_at
        self.retry_after_s = (
            max(0.0, (retry_at - datetime.now(UTC)).total_seconds()) if retry_at else None
        )


class SqliteStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker's storage interface on one SQLite file shared by the
    processes of one machine (the embedded default's state folder)."""

    def __init__(self, path: Path, name: str) -> None:
        super().__init__(name)
        self._path, self._key = Path(path), name
        self._local = threading.local()
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS breaker (name TEXT PRIMARY KEY, "
                "state TEXT NOT NULL, fails INTEGER NOT NULL DEFAULT 0, "
                "successes INTEGER NOT NULL DEFAULT 0, opened_at REAL)"
            )
            db.execute(
                "INSERT OR IGNORE INTO breaker (name, state) VALUES (?, ?)",
                (name, pybreaker.STATE_CLOSED),
            )

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            # Breaker state may lose its last change on a power cut (the next
            # failures rebuild it): no fsync per request.
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def _get(self, column: str) -> Any:
        row = (
            self._db()
            .execute(
                f"SELECT {column} FROM breaker WHERE name = ?",  # noqa: S608
                (self._key,),
            )
            .fetchone()
        )
        return row[0] if row else None

    def _set(self, sql: str, *args: Any) -> None:
        self._db().execute(
            f"UPDATE breaker SET {sql} WHERE name = ?",  # noqa: S608
            (*args, self._key),
        )

    @property
    def state(self) -> str:
        return str(self._get("state") or pybreaker.STATE_CLOSED)

    @state.setter
    def state(self, state: str) -> None:
        self._set("state = ?", str(state))

    def increment_counter(self) -> None:
        self._set("fails = fails + 1")

    def reset_counter(self) -> None:
        # Every success resets the count: write only when there is one to reset.
        self._db().execute(
            "UPDATE breaker SET fails = 0 WHERE name = ? AND fails != 0", (self._key,)
        )

    def increment_success_counter(self) -> None:
        self._set("successes = successes + 1")

    def reset_success_counter(self) -> None:
        self._set("successes = 0")

    @property
    def counter(self) -> int:
        return int(self._get("fails") or 0)

    @property
    def success_counter(self) -> int:
        return int(self._get("successes") or 0)

    @property
    def opened_at(self) -> datetime | None:
        ts = self._get("opened_at")
        return None if ts is None else datetime.fromtimestamp(ts, UTC)

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        self._set("opened_at = max(coalesce(opened_at, 0), ?)", when.timestamp())


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: Breakers) -> None:
        self.owner = owner

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        if old is None or old.name == new.name or self.owner.on_change is None:
            return
        storage = cb._state_storage
        try:
            self.owner.on_change(
                str(cb.name), old.name, new.name, storage.counter, storage.opened_at
            )
        except Exception:  # noqa: BLE001 - recording must never break the request
            pass


class Breakers:
    """One breaker per host, state in `storage(host)` (shared across workers)."""

    def __init__(
        self,
        storage: Callable[[str], pybreaker.CircuitBreakerStorage],
        *,
        fail_max: int = 5,
        reset_timeout_s: float = 30.0,
        on_change: Change | None = None,
    ) -> None:
        self._storage, self.fail_max, self.reset_timeout_s = storage, fail_max, reset_timeout_s
        self.on_change = on_change
        self._by_host: dict[str, pybreaker.CircuitBreaker] = {}
        self._lock = threading.Lock()

    def breaker(self, host: str) -> pybreaker.CircuitBreaker:
        with self._lock:
            cb = self._by_host.get(host)
            if cb is None:
                cb = self._by_host[host] = pybreaker.CircuitBreaker(
                    fail_max=self.fail_max,
                    reset_timeout=self.reset_timeout_s,
                    state_storage=self._storage(host),
                    listeners=[_Listener(self)],
                    name=host,
                    throw_new_error_on_trip=False,
                )
            return cb

    def state(self, host: str) -> str:
        return str(self.breaker(host).current_state)

    def call(self, host: str, fn: Callable[[], T]) -> T:
        """fn() through the host's breaker. Failures are exceptions: the
        transient network ones and `HostFailure`; anything else (a 404, an
        egress refusal) says the host is up and counts as a success."""
        cb = self.breaker(host)
        try:
            return cb.call(fn)
        except pybreaker.CircuitBreakerError:
            opened = cb._state_storage.opened_at
            retry_at = opened + timedelta(seconds=self.reset_timeout_s) if opened else None
            raise CircuitOpen(host, retry_at, cb._state_storage.counter) from None


def breakers_for(settings: Any, on_change: Change | None = None) -> Breakers:
    """Redis-backed breakers on a Redis broker, the state folder's otherwise."""
    url = settings.broker_url or ""
    if url.startswith(("redis://", "rediss://")):
        client = redis.Redis.from_url(url)

        def storage(host: str) -> pybreaker.CircuitBreakerStorage:
            return pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, client, namespace=f"orch:breaker:{host}"
            )
    else:
        path = settings.state / "breakers.sqlite"

        def storage(host: str) -> pybreaker.CircuitBreakerStorage:
            return SqliteStorage(path, host)

    return Breakers(
        storage,
        fail_max=settings.breaker_failure_threshold,
        reset_timeout_s=settings.breaker_reset_timeout_s,
        on_change=on_change,
    )


def record_transition(
    store: Any,
    actor: str,
    host: str,
    previous: str,
    state: str,
    failures: int,
    opened_at: datetime | None,
    reset_timeout_s: float,
) -> bool:
    """One CircuitChanged on `circuit:<host>` unless the stream already ends
    in that state (another worker recorded it). Returns whether this call
    appended."""
    stream = f"circuit:{host}"
    retry_at = (
        (opened_at + timedelta(seconds=reset_timeout_s)).isoformat()
        if state == "open" and opened_at
        else None
    )
    payload = p.CircuitChanged(
        host=host,
        state=state,  # type: ignore[arg-type]
        previous=previous,  # type: ignore[arg-type]
        failures=failures,
        retry_at=retry_at,
    )
    for _ in range(10):
        last, seq = None, 0
        for e in store.read_stream(stream):
            last, seq = e.payload, e.seq
        if (last is None and state == "closed") or (last is not None and last.state == state):
            return False
        try:
            store.append(
                stream, [NewEvent.create(payload, actor=actor, correlation_id=stream)], seq
            )
            return True
        except SequenceConflict:
            continue
    return False

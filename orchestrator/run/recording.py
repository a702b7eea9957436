"""Recording a finished result through a store outage: retry the recording, not the call.

A step's outcome (ToolCallCompleted or ToolCallFailed, with the turn's end)
is the one append whose loss costs work: the command already ran, and a
redelivery that finds the call started but not ended can only fail it as
interrupted ("the worker died", though nothing died). So the worker's store
is wrapped in `PatientStore`: an append that records an outcome is retried,
with the same events and idempotency key, while the store is unavailable,
for up to `patience_s` (the task waits, the result in memory, the
shell's changeset held back until it is recorded; nothing runs twice).

Past that the session cannot end honestly as completed: its changes were
never applied. Its failure (StoreUnavailable, saying so) goes to a `Spool`
(one JSON file per entry in a local folder, written atomically) before the
error reaches the task, and `flush` records it once the store is back. The
task flushes a session's entries before it runs that session again, and a
sweeper in the worker flushes the rest (tasks.recording): such a session
ends `failed`, never `running` forever.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from events.envelope import Event, NewEvent
from events.errors import StoreUnavailable
from events.store import EventStore
from orchestrator.ops import logs

_log = logs.get_logger(__name__)
Batch = Sequence[NewEvent]
OUTCOMES = frozenset({"ToolCallCompleted", "ToolCallFailed"})
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # then every 5 s


def records_outcome(batch: Sequence[NewEvent]) -> bool:
    """Whether the batch holds a call's outcome: the result of work already done."""
    return any(e.type in OUTCOMES for e in batch)


@dataclass
class Spool:
    """Batches (and session failures) waiting for the store, one file each.

    File names sort by the time they were written, so batches of one stream
    are re-appended in their order. Writes are atomic (temp file, fsync,
    rename): a crash leaves a whole entry or none."""

    folder: Path

    def put(self, entry: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(entry))
            fh.flush()
            os.fsync(fh.fileno())
        final = self.folder / name
        os.replace(tmp, final)
        return final

    def put_failure(
        self, session_id: str, job_id: str, ticket: dict[str, Any], error: str, message: str
    ) -> Path:
        return self.put(
            {
                "kind": "fail",
                "stream": session_id,
                "correlation": job_id,
                "ticket": ticket,
                "error": error,
                "message": message,
            }
        )

    def entries(self, stream: str | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
        """The waiting entries, oldest first (of one stream, if given)."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.json")):
            try:
                entry = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # taken by another sweeper meanwhile, or not ours
            if stream is None or entry.get("stream") == stream:
                yield path, entry

    def waiting(self, correlation: str | None = None) -> int:
        """How many entries wait (of one job, if given)."""
        return sum(
            1 for _, e in self.entries() if correlation is None or e["correlation"] == correlation
        )


Fail = Callable[[dict[str, Any]], None]  # records a spooled session failure


def flush(spool: Spool, fail: Fail, stream: str | None = None) -> int:
    """Record what waits in the spool (of one stream, if given), oldest first.

    Returns how many entries were recorded; stops at the first that the store
    still refuses (StoreUnavailable propagates from `fail`). Recording twice
    is harmless: a session's failure and its report are keyed."""
    done = 0
    for path, entry in spool.entries(stream):
        fail(entry)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        done += 1
        _log.info("spooled failure recorded", session_id=entry["stream"])
    return done


@dataclass
class PatientStore:
    """An `EventStore` whose outcome appends outlast a store outage (module doc).

    Everything else is the wrapped store's, unchanged."""

    inner: EventStore
    spool: Spool
    patience_s: float
    sleep: Callable[[float], None] = field(default=time.sleep)
    clock: Callable[[], float] = field(default=time.monotonic)

    def append(
        self, stream_id: str, batch: Sequence[NewEvent], expected_seq: int | None
    ) -> list[Event]:
        if not batch or batch[0].idempotency_key is None or not records_outcome(batch):
            return self.inner.append(stream_id, batch, expected_seq)
        return self._patiently(  # type: ignore[no-any-return]
            lambda: self.inner.append(stream_id, batch, expected_seq), [(stream_id, batch)]
        )

    def append_many(
        self, items: Sequence[tuple[str, Sequence[NewEvent], int | None]]
    ) -> list[list[Event]]:
        """A group commit (`EventStore.append_many`): patient as `append` when
        any of its batches records an outcome; past the patience, every
        session with an outcome in it gets its spooled failure."""
        outcomes = [
            (s, b) for s, b, _ in items if b and b[0].idempotency_key and records_outcome(b)
        ]
        if not outcomes:
            return self.inner.append_many(items)
        return self._patiently(lambda: self.inner.append_many(items), outcomes)  # type: ignore[no-any-return]

    def _patiently(self, write: Callable[[], Any], outcomes: list[tuple[str, Batch]]) -> Any:
        """`write()`, retried while the store is unavailable, up to the patience."""
        deadline = self.clock() + self.patience_s
        for attempt in range(1_000_000):
            try:
                return write()
            except StoreUnavailable as exc:
                if self.clock() >= deadline:
                    for stream_id, batch in outcomes:
                        where = self._give_up(stream_id, batch[0].correlation_id, exc)
                        _log.error(
                            "store unavailable: a finished result could not be recorded",
                            stream=stream_id,
                            patience_s=self.patience_s,
                            spool=str(where),
                            error=str(exc),
                        )
                    raise
                if attempt == 0:
                    _log.warning(
                        "store unavailable: retrying to record a finished result",
                        stream=outcomes[0][0],
                        patience_s=self.patience_s,
                        error=str(exc),
                    )
                self.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
        raise AssertionError("unreachable")

    def _give_up(self, session_id: str, job_id: str, exc: StoreUnavailable) -> Path:
        """Spool the session's failure (its call started: the ticket need not
        say more than which session of which job)."""
        ticket = {"job_id": job_id, "session_id": session_id, "target": "", "path": None}
        message = (
            f"the step finished but its result could not be recorded for "
            f"{self.patience_s:g} s (record_patience_s) while the event store was "
            f"unavailable, so its changes were not applied; resubmit the job. {exc}"
        )
        return self.spool.put_failure(session_id, job_id, ticket, "StoreUnavailable", message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

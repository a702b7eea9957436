"""The one-statement append: a stream head the store already knows, and the
INSERT that checks it in the database while it writes.

A writer that knows a stream's head (seq n, hash h), because it wrote it or
just read it, places the batch after it without reading the head again:

    INSERT INTO events (...) SELECT * FROM (VALUES (...), ...) AS v
    WHERE EXISTS (SELECT 1 FROM events WHERE stream_id = ? AND seq = n AND hash = h)
      AND NOT EXISTS (SELECT 1 FROM events WHERE stream_id = ? AND idempotency_key = ?)
    RETURNING position, seq

(on PostgreSQL the rows come from `unnest` of the batch's columns; SQLite
places them by the statement's last rowid instead of RETURNING:
`events.inserts`). The database checks everything the head read checked, in the same statement:
row n is there with hash h (so the chain continues from the stored row, and
a stream that is shorter than remembered, such as one restored from a backup,
inserts nothing), UNIQUE(stream_id, seq) refuses seq n+1 if anyone placed it
(the stream moved on), and the key was not stored before. When it inserts
nothing or hits the constraint, the store forgets the head and takes the path
that reads it, which decides between an idempotent hit, a conflict and a
retry exactly as before. A wrong head therefore costs a round trip, never a
wrong row. Seq 0 (a new stream) needs no EXISTS: its predecessor is the
genesis value, and UNIQUE refuses seq 1 when the stream is not empty.

An append with neither an idempotency key nor an expected seq always reads
the head: if the link dies during its INSERT, nothing could tell a retry
that the first attempt committed.
"""

from __future__ import annotations

import contextlib

HEADS = 4096  # streams whose head one store remembers (about 0.5 MB at most)


class Heads:
    """The last (seq, hash) this process wrote or read per stream, bounded:
    the oldest entry goes when it is full. A hint, never trusted: the guarded
    INSERT checks it in the database."""

    def __init__(self, size: int = HEADS) -> None:
        self.size = size
        self._heads: dict[str, tuple[int, str]] = {}

    def get(self, stream_id: str) -> tuple[int, str] | None:
        return self._heads.get(stream_id)

    def put(self, stream_id: str, seq: int, hash_: str) -> None:
        heads = self._heads
        heads.pop(stream_id, None)  # re-insert: most recently used goes last
        if len(heads) >= self.size:
            # Another thread may change the dict meanwhile: losing a hint is harmless.
            with contextlib.suppress(StopIteration, RuntimeError, KeyError):
                del heads[next(iter(heads))]
        heads[stream_id] = (seq, hash_)

    def forget(self, stream_id: str) -> None:
        self._heads.pop(stream_id, None)

    def clear(self) -> None:
        self._heads.clear()

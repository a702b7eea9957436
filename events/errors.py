"""Errors of the event core.

    EventError
    ├── SequenceConflict      expected_seq was stale: reload and decide again
    ├── UnknownEvent          a type or schema version this code cannot read
    ├── StoreUnavailable      the database cannot be reached (exit code 4)
    ├── SchemaNotReady        unmigrated or newer-than-known schema (exit code 2)
    │   └── UnknownSchemaRevision  a revision no migration here knows (a rollback)
    └── AppendOnlyViolation   someone tried to change history (refused by the DB)

Every message says what happened, why, and what to do next.
"""

from __future__ import annotations

import os
from pathlib import Path


class EventError(Exception):
    """Base class; `exit_code` is what the CLI returns for it."""

    exit_code = 2
    transient = False


class SequenceConflict(EventError):
    """Another writer appended to the stream since the caller read it."""

    transient = True

    def __init__(self, stream_id: str, expected_seq: int, actual_seq: int) -> None:
        super().__init__(
            f"stream {stream_id}: expected last seq {expected_seq} but it is {actual_seq}; "
            "another writer appended first. Reload the stream and decide again."
        )
        self.stream_id, self.expected_seq, self.actual_seq = stream_id, expected_seq, actual_seq


class UnknownEvent(EventError):
    """A stored event whose type or schema version this code does not know."""

    def __init__(self, stream_id: str, seq: int, type_: str, version: int) -> None:
        super().__init__(
            f"stream {stream_id} seq {seq}: unknown event type {type_!r} version {version}. "
            "It was written by a newer release or a foreign writer; upgrade this "
            "installation (or add an upcaster) before reading this stream."
        )
        self.stream_id, self.seq, self.type, self.version = stream_id, seq, type_, version


class StoreUnavailable(EventError):
    exit_code = 4
    transient = True

    def __init__(self, url: str, cause: BaseException) -> None:
        self.cause = named_cause(url, cause)
        if self.cause is None:
            remedy = (
                "Check that the database is running and reachable, and the ORCH_STORE_URL setting."
            )
        elif self.cause.startswith("disk full"):
            remedy = "Free space on that disk: the workers go on by themselves once there is."
        else:
            remedy = (
                "Make the store writable again (a file system remounted read-only, "
                "a replica, or the file's permissions): the workers go on once it is."
            )
        head = f"{self.cause}: " if self.cause else ""
        super().__init__(f"event store at {url} is unavailable: {head}{cause}. {remedy}")


def named_cause(url: str, cause: BaseException) -> str | None:
    """ "disk full at PATH" or "read-only store at PATH" when the driver's error
    says so (SQLite's SQLITE_FULL/SQLITE_READONLY, PostgreSQL's ENOSPC), else None:
    what an operator acts on, instead of a connection pool's symptom."""
    text = str(cause).lower()
    where = url.split(":///", 1)[1] if url.startswith("sqlite") and ":///" in url else url
    if "disk is full" in text or "no space left" in text or "disk full" in text:
        return f"disk full at {where}"
    if "readonly database" in text or "read-only" in text or "read only" in text:
        return f"read-only store at {where}"
    if where != url and "disk i/o error" in text:  # SQLite's shared memory could not grow
        return filesystem_problem(Path(where))
    return None


def filesystem_problem(path: Path, min_free: int = 1024 * 1024) -> str | None:
    """ "disk full at PATH" or "read-only store at PATH" from the file system
    that holds `path` (an SQLite store), else None."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return f"read-only store at {path} (its file system is mounted read-only)"
    free = st.f_bavail * st.f_frsize
    if free < min_free:
        return f"disk full at {path} ({free // 1024} KiB free)"
    return None


class SchemaNotReady(EventError):
    def __init__(self, url: str, found: str | None, expected: str) -> None:
        if found is None:
            msg = (
                f"event store at {url} has no schema yet. "
                "Run `orchestrator db upgrade` to create it."
            )
        else:
            msg = (
                f"event store at {url} is at schema revision {found}, but this release "
                f"knows up to {expected}. Run `orchestrator db upgrade` if it is older, "
                "or upgrade this installation if the database is newer."
            )
        super().__init__(msg)
        self.found, self.expected = found, expected


class UnknownSchemaRevision(SchemaNotReady):
    """The store is at a revision this release has no migration for: a newer
    release migrated it, and this one was rolled back to (runbooks/rollback.md)."""

    def __init__(self, url: str, found: str, expected: str) -> None:
        EventError.__init__(
            self,
            f"event store at {url} is at schema revision {found}, which this release does "
            f"not know (its newest is {expected}): a newer release migrated it. Run the "
            "release that did (roll forward), or restore the backup taken before that "
            "upgrade; `orchestrator db upgrade` cannot go back (runbooks/rollback.md).",
        )
        self.found, self.expected = found, expected


class AppendOnlyViolation(EventError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the event store is append-only and refused a change to history: {detail}"
        )

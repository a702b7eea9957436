"""Errors of the event core.

    EventError
    ├── SequenceConflict      expected_seq was stale: reload and decide again
    ├── UnknownEvent          a type or schema version this code cannot read
    ├── StoreUnavailable      the database cannot be reached (exit code 4)
    ├── SchemaNotReady        unmigrated or newer-than-known schema (exit code 2)
    └── AppendOnlyViolation   someone tried to change history (refused by the DB)

Every message says what happened, why, and what to do next.
"""

from __future__ import annotations


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
        super().__init__(
            f"event store at {url} is unavailable: {cause}. Check that the database "
            "is running and reachable, and the ORCH_STORE_URL setting."
        )


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


class AppendOnlyViolation(EventError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the event store is append-only and refused a change to history: {detail}"
        )

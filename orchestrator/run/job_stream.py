"""What a step writes to and reads from its job's stream (not its session's):
that a session ended, the job's completion after the last, and whether the
job was cancelled."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from events import payloads as p
from events.envelope import Event
from events.replay import job_state_at
from events.store import EventStore

Append = Callable[[str, list[Any], int | None, str | None, str, str | None], list[Event]]
Cancel = tuple[str, str]  # (by, reason) of a JobCancelRequested


def cancel_in(tail: Iterable[Event], seen: int, found: Cancel | None) -> tuple[int, Cancel | None]:
    """(seq read up to, the first cancellation) after the job stream's `tail`."""
    for e in tail:
        seen = e.seq
        if isinstance(e.payload, p.JobCancelRequested) and found is None:
            found = (e.payload.by, e.payload.reason)
    return seen, found


def finished(
    append: Append,
    store: EventStore,
    job_id: str,
    session_id: str,
    status: str,
    cause: str | None,
    total: int,
) -> None:
    """SessionFinished on the job stream; JobCompleted after the last session's.

    SessionFinished is keyed by session, so the job stream holds exactly one
    per session after JobSubmitted: whoever lands at seq total+1 was the last
    to finish and completes the job (no need to read it all)."""
    stored = append(
        job_id,
        [p.SessionFinished(session_id=session_id, status=status)],  # type: ignore[arg-type]
        None,
        f"finished:{session_id}",
        job_id,
        cause,
    )
    if total and stored[-1].seq < total + 1:
        return
    # After what was read (a cancel request landing in between is a conflict:
    # the caller's retry reads again and the job ends cancelled).
    job, seq = job_state_at(store, job_id)
    if job.all_finished and job.status == "running":
        failed = job.failed
        completed = p.JobCompleted(
            status=job.ending,
            sessions_completed=len(job.finished) - failed,
            sessions_failed=failed,
        )
        append(job_id, [completed], seq, "job:completed", job_id, cause)

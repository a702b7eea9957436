"""Stalled jobs: the pure verdict, and what `status` says of a job's trouble.

A broker that loses messages (Redis restarted without persistence, a queue
purged) leaves sessions that no task will ever run: the job says `running`
forever. `stalled` names that: a running job with an unfinished session that
waits for no answer, and no event on any of its streams for `stall_after_s`.
Running steps append nothing until they end, so keep `stall_after_s` above
the longest step's timeout. `orchestrator.service.resume` finds stalled jobs
in the store and resumes them; `status` judges the job it read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from events.projections import JobState, SessionState

__all__ = ["Stall", "stalled", "trouble", "trouble_lines"]


@dataclass(frozen=True)
class Stall:
    """A running job that made no progress for `idle_s` seconds."""

    job_id: str
    name: str
    idle_s: float
    unfinished: int

    def to_json(self) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "name": self.name,
            "idle_s": round(self.idle_s, 1),
            "unfinished_sessions": self.unfinished,
        }


def stalled(
    job: JobState,
    sessions: Sequence[SessionState],
    last_event_at: datetime,
    now: datetime,
    after_s: float,
) -> Stall | None:
    """Pure: the job's stall, or None (finished, waiting for an answer, or recent)."""
    if job.status != "running":
        return None
    reported = {sid for sid, _ in job.finished}
    unfinished = [s for s in sessions if s.session_id not in reported]
    if not unfinished and len(reported) >= len(job.sessions):
        return None
    if any(s.waiting for s in unfinished):
        return None  # an operator's answer is what it waits for, not a task
    idle = (now - last_event_at).total_seconds()
    if idle < after_s:
        return None
    return Stall(job.job_id, job.name, idle, len(job.sessions) - len(reported))


def trouble(
    job: JobState,
    sessions: Iterable[SessionState],
    last_event_at: datetime | None,
    now: datetime,
    after_s: float,
    store_problem: str | None,
) -> dict[str, object]:
    """What `status` adds about a job: `stalled` (a Stall's JSON or None)
    and `store_problem` (disk full, read-only store, or None), from the job's
    state, its sessions' and its newest event's time."""
    started = [s for s in sessions if s.status != "new"]
    found = None if last_event_at is None else stalled(job, started, last_event_at, now, after_s)
    return {"stalled": None if found is None else found.to_json(), "store_problem": store_problem}


def trouble_lines(job_id: str, trouble: dict[str, object]) -> list[str]:
    lines = []
    if trouble.get("store_problem"):
        lines.append(
            f"{trouble['store_problem']}: workers cannot record progress until it is fixed"
        )
    stall = trouble.get("stalled")
    if isinstance(stall, dict):
        lines.append(
            f"stalled: no progress for {stall['idle_s']:.0f} s and no task is recording any; "
            f"run `orchestrator resume {job_id}` (runbooks/oncall.md)"
        )
    return lines

"""JobState: a job's own stream (its sessions, which finished, cancel).

A job stream holds a few events per session, so this fold copies frozen
state per event and needs no working copy."""

from __future__ import annotations

from typing import Literal

from events import payloads as p
from events.envelope import Event
from events.projections.frozen import Frozen


class JobState(Frozen):
    job_id: str = ""
    name: str = ""
    sessions: tuple[p.SessionRef, ...] = ()
    finished: tuple[tuple[str, str], ...] = ()  # (session_id, status) in finishing order
    status: Literal["new", "running", "completed", "failed", "cancelled"] = "new"
    spec: dict[str, object] = {}
    policy: dict[str, object] | None = None  # as submitted (None: recorded before the field)
    tier: str | None = None
    elevated_by: str | None = None
    cancelled_by: str | None = None  # JobCancelRequested: who, and why
    cancel_reason: str = ""

    @property
    def all_finished(self) -> bool:
        return bool(self.sessions) and len(self.finished) >= len(self.sessions)

    @property
    def failed(self) -> int:
        return sum(1 for _, st in self.finished if st == "failed")

    @property
    def ending(self) -> Literal["completed", "failed", "cancelled"]:
        """The status the job ends with once its sessions have: cancelled when
        a cancel was requested before that, else failed when one failed."""
        if self.cancelled_by is not None:
            return "cancelled"
        return "failed" if self.failed else "completed"

    @property
    def outcome(self) -> str:
        """Its status, with the end it is bound to once every session ended
        though JobCompleted (appended after the last SessionFinished) is not
        read yet: a reader between the two never reports a finished job as
        running."""
        if self.status == "running" and self.all_finished:
            return self.ending
        return self.status


def apply_job(s: JobState, e: Event) -> JobState:
    pl = e.payload
    if isinstance(pl, p.JobSubmitted):
        return s.model_copy(
            update={
                "job_id": e.stream_id,
                "name": pl.name,
                "spec": pl.spec,
                "sessions": pl.sessions,
                "policy": pl.policy,
                "tier": pl.tier,
                "elevated_by": pl.elevated_by,
                "status": "running",
            }
        )
    if isinstance(pl, p.SessionFinished):
        if any(sid == pl.session_id for sid, _ in s.finished):
            return s
        return s.model_copy(update={"finished": (*s.finished, (pl.session_id, pl.status))})
    if isinstance(pl, p.JobCompleted):
        return s.model_copy(update={"status": pl.status})
    if isinstance(pl, p.JobCancelRequested) and s.cancelled_by is None:
        return s.model_copy(update={"cancelled_by": pl.by, "cancel_reason": pl.reason})
    return s

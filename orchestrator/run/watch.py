"""Following a job as its events land: the view `run` and `status` render."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from events.envelope import Event, construct_trusted
from events.payloads import PAYLOAD_TYPES
from events.projections import JobState, SessionState, apply_job, apply_session, fold_records
from events.projections.frozen import timestamp
from events.upcast import current
from orchestrator import lazy

if TYPE_CHECKING:
    from events.store import EventStore

# SQLAlchemy loads with a store; `status` folds rows it read without one
# (`view_of`, bench/cli_startup.py).
_replay = lazy.module("events.replay")
_history = lazy.module("events.history")

ENDED = ("completed", "failed", "cancelled")


@dataclass
class JobView:
    job_id: str
    job: JobState = field(default_factory=JobState)
    sessions: dict[str, SessionState] = field(default_factory=dict)
    position: int = 0

    def feed(self, e: Event) -> None:
        if e.stream_id == self.job_id:
            self.job = apply_job(self.job, e)
        else:
            self.sessions[e.stream_id] = apply_session(
                self.sessions.get(e.stream_id, SessionState()), e
            )
        self.position = max(self.position, e.position)

    def poll(self, store: EventStore) -> list[Event]:
        new = list(store.read_correlation(self.job_id, self.position))
        for e in new:
            self.feed(e)
        return new

    @property
    def done(self) -> bool:
        return self.job.outcome in ENDED

    @property
    def waiting(self) -> list[str]:
        """Sessions that wait for a confirmation."""
        return [sid for sid, s in self.sessions.items() if s.waiting and not s.finished]

    @property
    def settled(self) -> bool:
        """Done, or every session not finished waits for an operator."""
        if self.done:
            return True
        finished = {sid for sid, _ in self.job.finished}
        return bool(self.job.sessions) and all(
            ref.session_id in finished or ref.session_id in self.waiting
            for ref in self.job.sessions
        )


def final_view(store: EventStore, job_id: str) -> JobView:
    """The job rebuilt from its streams (not from what a live poll saw), as of
    one point: the job stream is read again after its sessions, and a session
    it says finished but that was read before its end is read again. (A
    session's end is appended before its SessionFinished, and the job's
    completion after the last of those, so no reader sees a finished job as
    running, or a completed job with a running session.) Each session's whole
    history: the view lists its files and patch."""
    job = _replay.job_state(store, job_id)
    sessions = {
        ref.session_id: _history.history(store, ref.session_id).session for ref in job.sessions
    }
    view = JobView(job_id, job=_replay.job_state(store, job_id) if job.sessions else job)
    for sid, _ in view.job.finished:
        if sid in sessions and not sessions[sid].finished:
            sessions[sid] = _history.history(store, sid).session
    view.sessions = sessions
    return view


def view_of(
    job_id: str,
    rows: Iterable[tuple[int, bytes, str]],
    loads: Callable[[bytes], dict[str, Any]],
) -> tuple[JobView, datetime | None]:
    """What `final_view` gives, from one read of all the job's rows
    ((position, body, hash) in position order, as `SqlEventStore.raw_all`
    and `events.quickread` give them, opened by `loads`), and the time of the
    newest event of the job's stream and its sessions' (a stall's measure).
    The same folds: `apply_job` over the job's events, the session fold
    (`fold_records`, as replay) over each session's records."""
    job = JobState()
    streams: dict[str, list[dict[str, Any]]] = {}
    for position, body, hash_ in rows:
        record = current(loads(body))
        sid = record["stream_id"]
        if sid == job_id:
            job = apply_job(job, _event(record, position, hash_))
        streams.setdefault(sid, []).append(record)
    view = JobView(job_id, job=job)
    view.sessions = {
        ref.session_id: fold_records(streams.get(ref.session_id, ())).session
        for ref in job.sessions
    }
    ends = [
        timestamp(streams[sid][-1]["occurred_at"])
        for sid in (job_id, *view.sessions)
        if streams.get(sid)
    ]
    return view, max(ends, default=None)


def _event(record: dict[str, Any], position: int, hash_: str) -> Event:
    """A job stream's record as the `Event` `apply_job` reads: its payload
    validated by its own model, the envelope taken as stored (hash-chained,
    written from a validated model), so the union of every payload type is
    not built for a few job events (`status`'s start-up)."""
    values = {
        **record,
        "payload": PAYLOAD_TYPES[record["type"]].model_validate(record["payload"]),
        "occurred_at": timestamp(record["occurred_at"]),
        "position": position,
        "hash": hash_,
    }
    event: Event = construct_trusted(Event, values)
    return event


def counts(rows: list[dict[str, object]]) -> dict[str, int]:
    """How many targets succeeded, failed, wait for a confirmation, and still
    run (a `--timeout` that gave up), from `session_summary` rows."""
    statuses = [r["status"] for r in rows]
    return {
        "succeeded": statuses.count("completed"),
        "failed": statuses.count("failed"),
        "waiting": statuses.count("waiting"),
        "running": len(statuses)
        - statuses.count("completed")
        - statuses.count("failed")
        - statuses.count("waiting"),
    }


def counts_line(c: dict[str, int]) -> str:
    """`run`'s last line: "N succeeded, M failed, K waiting" (and R running)."""
    line = f"{c['succeeded']} succeeded, {c['failed']} failed, {c['waiting']} waiting"
    return line + (f", {c['running']} running" if c["running"] else "")


def session_summary(view: JobView) -> list[dict[str, object]]:
    rows = []
    for ref in view.job.sessions:
        s = view.sessions.get(ref.session_id, SessionState())
        done = sum(1 for t in s.turns if t.status == "ok")
        rows.append(
            {
                "session_id": ref.session_id,
                "target": ref.target,
                "workspace": s.target,
                "status": "waiting" if s.waiting and not s.finished else s.status,
                "waiting": [c.call_id for c in s.waiting],
                "steps_ok": done,
                "steps": max(len(s.steps), len(s.turns)),
                "error": s.error,
                "files_changed": [c.path for c in s.files_changed],
                "patch": s.patch,
                "agent": _agent_summary(s),
            }
        )
    return rows


def _agent_summary(s: SessionState) -> dict[str, object] | None:
    """For an agent session: its model, how many model turns and tool calls it
    took, and its last message (the summary a job's agent ends with)."""
    a = s.agent
    if a is None:
        return None
    last = a.last_reply
    return {
        "model": a.model,
        "model_turns": a.model_turns,
        "tool_calls": sum(1 for e in a.entries for c in e.calls if c.turn),
        "invalid_calls": a.invalid_calls,
        "message": last.text if last else None,
    }

"""One step for a chunk of sessions, stored together: group commit.

`tasks.steps.run_steps` runs step `index` for up to 32 sessions of one job.
One by one, every session costs four transactions (its start, its planned
call, its outcome, its report on the job stream), each a COMMIT with its
fsync, and each changed file an fsync of its own. Here the chunk goes through
the same phases side by side, and each phase is ONE transaction for all its
sessions (`EventStore.append_many`: per-stream sequence checks and the same
idempotency keys as one by one):

    1. the starts of the sessions not yet started;
    2. each call's request, decision and planned edits (ToolCallStarted,
       FileChanged), or its whole outcome when it has nothing to protect;
    3. the tools run: the new contents of all the chunk's planned edits are
       staged first and made durable by one sync of the file system
       (`tools.applying.prestaged`), then each tool renames its own; the
       renames are made durable by one more sync (`tools.durable`), and only then
    4. the outcomes (ToolCallCompleted, TurnCompleted, the session's end);
    5. the reports of the ended sessions on the job stream.

The order the record relies on is kept for every session: its plan is
stored before its files change, its files are durable before its outcome
says they changed. Nothing here is new state: a session that is anywhere
but at the start of this step (redelivered, waiting, cancelled, started by
another delivery) or whose group could not be stored is handed back (None)
and runs alone through `Runner.run_step`, which resumes from the record.
An error of one session is handed back as that session's error, for its
task to handle as it handles one from `run_step`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events import payloads as p
from events.errors import SequenceConflict
from events.projections import Projections
from orchestrator.run.calls import Call
from orchestrator.run.runner import Runner
from orchestrator.run.steps import Step
from orchestrator.run.templates import render_step
from orchestrator.run.ticket import Ticket
from orchestrator.tools import applying, durable
from orchestrator.tools.base import Plan, ToolResult

# Per session: its status after the step, its error, or None (run it alone).
Outcome = str | Exception | None


@dataclass
class _Live:
    """A session going through the chunk's phases."""

    ticket: Ticket
    state: Projections
    call: Call | None = None
    planned: Plan | None = None
    result: ToolResult | None = None
    end: list[Any] | None = None


def run_chunk(
    runner: Runner,
    tickets: Sequence[Ticket],
    index: int,
    step: Step,
    *,
    last: bool,
    task_id: str | None = None,
    states: Mapping[str, Projections] | None = None,
) -> dict[str, Outcome]:
    """Step `index` of every session of `tickets` (one job), phase by phase.
    `states`: each session's state as the task read it a moment before (no
    second read; a stale one makes the group conflict, and each session then
    runs alone from the record)."""
    out: dict[str, Outcome] = {t.session_id: None for t in tickets}
    cause = f"task:{task_id}" if task_id else None
    try:
        if not tickets or runner.cancellation(tickets[0].job_id) is not None:
            return out  # a cancelled job: each session records its end alone
    except Exception:  # noqa: BLE001 - each session meets it again alone
        return out
    live = _started(runner, tickets, index, cause, out, states or {})
    live = _planned(runner, live, index, step, last, cause, out)
    live = _ran(runner, live, out)
    _reported(runner, live, last, cause, out)
    return out


def _commit(
    runner: Runner, live: list[_Live], items: list[tuple[str, list[Any], int | None]], out: dict
) -> list[list[Any]] | None:
    """One group append for `live` (one item each); None when it was not
    stored (a conflict: run them alone; another error: theirs)."""
    if not items:
        return []
    try:
        return runner.store.append_many(items)
    except SequenceConflict:
        return None
    except Exception as exc:  # noqa: BLE001 - every session of the group meets it
        for s in live:
            out[s.ticket.session_id] = exc
        return None


def _ours(stored: list[Any], batch: list[Any]) -> bool:
    return bool(stored) and stored[0].event_id == batch[0].event_id


def _started(
    runner: Runner,
    tickets: Sequence[Ticket],
    index: int,
    cause: str | None,
    out: dict,
    states: Mapping[str, Projections],
) -> list[_Live]:
    """Phase 1: load every session; start those not started (one append)."""
    turn = index + 1
    ready: list[_Live] = []
    new: list[_Live] = []
    items: list[tuple[str, list[Any], int | None]] = []
    for t in tickets:
        sid = t.session_id
        try:
            state = states.get(sid) or runner.load(sid)
            s = state.session
            if s.status == "new":
                events = runner.start_events(t)
                if any(isinstance(e, p.SessionFailed) for e in events):
                    continue  # a missing target: recorded alone
                new.append(_Live(t, state))
                batch = runner.batch(events, "session:started", t.job_id, cause)
                items.append((sid, batch, state.last_seq))
            elif (
                not s.finished
                and s.call(f"{sid}/{turn}") is None
                and not s.waiting
                and not any(c.turn < turn and c.status == "asked" for c in s.calls)
            ):
                ready.append(_Live(t, state))
        except Exception as exc:  # noqa: BLE001 - that session's error
            out[sid] = exc
    stored = _commit(runner, new, items, out)
    for s, (_, batch, _), appended in zip(new, items, stored or ()):
        s.state = runner.absorb(s.ticket.session_id, s.state, appended)
        if _ours(appended, batch) and not s.state.session.finished:
            ready.append(s)
    return ready


def _planned(
    runner: Runner,
    live: list[_Live],
    index: int,
    step: Step,
    last: bool,
    cause: str | None,
    out: dict,
) -> list[_Live]:
    """Phase 2: decide every call and store its request and plan (one append)."""
    turn = index + 1
    go: list[_Live] = []
    items: list[tuple[str, list[Any], int | None]] = []
    for s in live:
        t = s.ticket
        try:
            rendered = render_step(step, t.vars)
            s.call = Call(
                t,
                turn,
                rendered,
                runner.tools[rendered.kind],
                Path(s.state.session.target),
                last,
                cause,
            )
            s.planned, events = runner.phase1_events(s.call, s.state)
        except Exception as exc:  # noqa: BLE001 - that session's error (a rate limit too)
            out[t.session_id] = exc
            continue
        go.append(s)
        items.append(
            (
                t.session_id,
                runner.batch(events, s.call.key("start"), t.job_id, cause),
                s.state.last_seq,
            )
        )
    stored = _commit(runner, go, items, out)
    done: list[_Live] = []
    for s, (_, batch, _), appended in zip(go, items, stored or ()):
        if not _ours(appended, batch):
            continue  # another delivery's plan is the one recorded: resumed alone
        s.state = runner.absorb(s.ticket.session_id, s.state, appended)
        done.append(s)
    return done


def _ran(runner: Runner, live: list[_Live], out: dict) -> list[_Live]:
    """Phases 3 and 4: run the started calls, make their files durable once,
    store their outcomes (one append), then let each tool commit."""
    running: list[_Live] = []
    finished: list[_Live] = []
    for s in live:
        assert s.call is not None
        recorded = s.state.session.call(s.call.call_id)
        if recorded is not None and recorded.status == "started" and s.planned is not None:
            running.append(s)
        else:
            finished.append(s)  # refused, asked, or done with its plan (effect-free)
    plans = [(s.call.workspace, s.planned.edits) for s in running if s.call and s.planned]
    with durable.deferred_durability() as pending, applying.prestaged(plans):
        for s in running:
            assert s.call is not None
            try:
                s.end, s.result = runner._outcome(s.call, s.state.session, s.planned)
            except Exception as exc:  # noqa: BLE001 - that session's error
                out[s.ticket.session_id] = exc
    ran = [s for s in running if s.end is not None]
    try:
        durable.make_durable(pending)
    except OSError as exc:
        for s in ran:
            out[s.ticket.session_id] = exc
        return finished
    items = [
        (
            s.ticket.session_id,
            runner.batch(s.end or [], s.call.key("end"), s.ticket.job_id, s.call.cause),
            s.state.last_seq,
        )
        for s in ran
        if s.call is not None
    ]
    stored = _commit(runner, ran, items, out)
    for s, (_, batch, _), appended in zip(ran, items, stored or ()):
        assert s.call is not None
        fresh = _ours(appended, batch)
        if s.result is not None:
            done = s.call.tool.commit if fresh else s.call.tool.discard
            done(runner._tool_call(s.call, s.state.session), s.result)
        s.state = runner.absorb(s.ticket.session_id, s.state, appended)
        finished.append(s)
    return finished


def _reported(runner: Runner, live: list[_Live], last: bool, cause: str | None, out: dict) -> None:
    """Phase 5: each session's status; the ended ones reported on the job
    stream together (one append), the job completed by the last of them."""
    ended: list[_Live] = []
    for s in live:
        sid, status = s.ticket.session_id, s.state.session.status
        recorded = s.state.session.call(s.call.call_id) if s.call else None
        if recorded is not None and recorded.status == "asked":
            out[sid] = "waiting"
            continue
        try:
            if not s.state.session.finished and last:
                s.state = runner.absorb(
                    sid,
                    s.state,
                    runner._append(
                        sid,
                        [p.SessionCompleted(files_changed=s.state.session.files_count)],
                        s.state.last_seq,
                        "session:completed",
                        s.ticket.job_id,
                        cause,
                    ),
                )
                status = s.state.session.status
        except Exception as exc:  # noqa: BLE001 - that session's error
            out[sid] = exc
            continue
        out[sid] = status
        if s.state.session.finished:
            ended.append(s)
    items = [
        (
            s.ticket.job_id,
            runner.batch(
                [p.SessionFinished(session_id=s.ticket.session_id, status=s.state.session.status)],  # type: ignore[arg-type]
                f"finished:{s.ticket.session_id}",
                s.ticket.job_id,
                cause,
            ),
            None,
        )
        for s in ended
    ]
    try:
        stored = runner.store.append_many(items) if items else []
    except Exception:  # noqa: BLE001 - reported one by one below instead
        stored = [[] for _ in items]
    for s, appended in zip(ended, stored):
        t = s.ticket
        total = t.sessions_total
        if appended and total and appended[-1].seq < total + 1:
            continue
        try:  # the last to finish completes the job (or the report is retried alone)
            runner.report(t.job_id, t.session_id, s.state.session.status, cause, total)
        except Exception as exc:  # noqa: BLE001 - that session's error
            out[t.session_id] = exc

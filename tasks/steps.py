"""Step tasks: thin shells around `orchestrator.run.runner`.

A job is a Celery group of one chain per target; each link is `run_step`.
Retries happen only for errors that say they are transient (a database or
broker that went away, a lost race); anything else fails the session with the
error recorded, so the chain, the job and the operator never hang.

A step task stores no result when it succeeds (`STEP_TASK`): the event store
is the record of what a step did, nothing waits on a step's `AsyncResult`
(chains are sent on by the worker, Flower reads task events), and on the
embedded shape each stored result was a SQLite transaction of 16-30 ms in the
gap between two tasks of a batch job. A failure is still stored, so an
`AsyncResult` says FAILURE with the recorded reason (tasks.outcome); a
caller that wants the success too sends `ignore_result=False`.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.log import get_task_logger
from pydantic import TypeAdapter
from sqlalchemy.engine import make_url

from events.urls import normalize_url
from orchestrator.guard import credentials
from orchestrator.ops import logs
from orchestrator.run.chunk import run_chunk
from orchestrator.run.failing import fail_session
from orchestrator.run.runner import Ticket
from orchestrator.run.steps import Step
from tasks import reaper, recording  # noqa: F401  (reaper: its thread, on worker_ready)
from tasks.app import app, settings
from tasks.deps import deps
from tasks.outcome import StepFailed, settle, states_before

STEP = TypeAdapter(Step)
# Options both step tasks share (the module docstring says why no success is stored).
STEP_TASK: dict[str, Any] = {
    "acks_late": True,
    "max_retries": settings.task_max_retries,
    "ignore_result": True,
    "store_errors_even_if_ignored": True,
}
log = get_task_logger(__name__)


@signals.worker_init.connect(weak=False)
def _warm(**_: Any) -> None:
    """Compile the credential shapes the store's masking filter needs once,
    in the worker's main process before the pool forks: each child paid
    about 0.3 s for it (detect-secrets' imports) on its first masked event,
    inside the first job it ran."""
    credentials.shapes()
    credentials.secret_name()
    # The store's database driver too (psycopg: 0.1 s under load), which
    # each child imported when its first task opened the store. Only the
    # import: a connection opened here would not survive the fork. A URL or
    # driver that fails here fails the first task's store, as before.
    with contextlib.suppress(Exception):
        make_url(normalize_url(settings.effective_store_url)).get_dialect().import_dbapi()


@signals.worker_before_create_process.connect(weak=False)
def _freeze(**_: Any) -> None:
    """Before the pool forks a child: every object the worker holds by now
    (its imported modules, the app, the compiled shapes: about 200,000)
    goes into the collector's permanent generation (`gc.freeze`, what the
    `gc` docs advise before a fork). A child's full collections walked them
    all, 65-145 ms of its CPU once every 1,000 or so no-op steps (that
    step's round trip many times its usual); they now walk only what the
    child made (about 5,000 objects).
    Garbage is collected first, so none is frozen; what is frozen lives as
    long as the worker anyway. The child also writes less to the pages it
    shares with its parent (a collection writes to every object it walks).
    Once per child forked: at the pool's start, and when it replaces one."""
    gc.collect()
    gc.freeze()


def _run_one(
    task: Any,
    t: Ticket,
    index: int,
    step: Step,
    last: bool,
    state: Any = None,
    error: Exception | None = None,
) -> str:
    """One session's step (from `state`, the session as this task loaded it,
    when given); an error that is not transient fails that session only.
    `error`: the session's step already met it (in a chunk): handled the same way."""
    logs.bind(job_id=t.job_id, session_id=t.session_id)
    try:
        if error is not None:
            raise error
        if recording.flush_session(t):  # a result kept through a store outage comes first
            state = None  # it appended: read the stream again
        return deps().runner.run_step(
            t, index, step, last=last, task_id=task.request.id, state=state
        )
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:
        if getattr(exc, "transient", False) and task.request.retries < task.max_retries:
            # Retrying is a property of the error: a rate limit says when.
            delay = getattr(exc, "retry_after_s", None) or min(2**task.request.retries, 30)
            raise task.retry(exc=exc, countdown=delay) from exc
        log.exception("step %s of session %s failed: %s", index + 1, t.session_id, exc)
        recording.fail_or_spool(
            t, type(exc).__name__, f"step {index + 1} could not run: {exc}", task.request.id
        )
        return "failed"


def _time_limit(t: Ticket, index: int, task_id: str, chunk: int = 1) -> None:
    what = f"a chunk of {chunk} sessions" if chunk > 1 else "the task"
    fail_session(
        deps().runner,
        t,
        "TaskTimeLimit",
        f"step {index + 1} ran past the time limit of {what}; raise the step's timeout_s",
        task_id,
    )


def _together(
    task: Any, ts: list[Ticket], index: int, step: Step, last: bool, states: dict[str, Any]
) -> dict[str, Any]:
    """The chunk's step stored phase by phase for all its sessions (group
    commit, `orchestrator.run.chunk`), from the `states` the task just read;
    what it hands back runs one by one."""
    ready: list[Ticket] = []
    found: dict[str, Any] = {}
    for t in ts:
        try:
            recording.flush_session(t)  # a result kept through a store outage comes first
            ready.append(t)
        except Exception as exc:  # noqa: BLE001 - handled as that session's error
            found[t.session_id] = exc
    if ts:
        logs.bind(job_id=ts[0].job_id)
    try:
        found.update(
            run_chunk(
                deps().runner, ready, index, step, last=last, task_id=task.request.id, states=states
            )
        )
    except SoftTimeLimitExceeded as exc:
        found = dict.fromkeys((t.session_id for t in ts), exc)  # the loop fails them
    except Exception:  # noqa: BLE001 - one by one, each meets its own error
        log.exception("step %s of a chunk could not run together; one by one", index + 1)
    return found


@app.task(
    bind=True,
    name="orchestrator.run_step",
    throws=(StepFailed,),  # an expected end: Celery logs it without a traceback
    **STEP_TASK,
)
def run_step(
    self: Any, ticket: dict[str, Any], index: int, step: dict[str, Any], last: bool
) -> str:
    """One session's step; a session that fails here makes the task a
    FAILURE once recorded (tasks.outcome)."""
    t = Ticket.model_validate(ticket)
    before, states = states_before(deps().runner, [t])
    try:
        status = _run_one(
            self, t, index, STEP.validate_python(step), last, states.get(t.session_id)
        )
    except SoftTimeLimitExceeded:
        _time_limit(t, index, self.request.id)
        status = "failed"
    settle(self, deps().runner, [t], [status], before, f"step {index + 1}")
    return status


@app.task(
    bind=True,
    name="orchestrator.run_steps",
    throws=(StepFailed,),
    **STEP_TASK,
)
def run_steps(
    self: Any, tickets: list[dict[str, Any]], index: int, step: dict[str, Any], last: bool
) -> list[str]:
    """Step `index` of each session of a chunk, one session after another.

    Chunked fan-out (`tasks.dispatch`) for fast steps: one message, one
    worker-side setup and one result for several sessions. Each session is
    still its own stream with its own events and idempotency keys, so a retry
    or redelivery of the whole chunk re-runs nothing that was recorded.
    A session that fails here makes the task a FAILURE once the chunk is
    done; the chain goes on for the others (tasks.outcome)."""
    parsed = STEP.validate_python(step)
    ts = [Ticket.model_validate(raw) for raw in tickets]
    before, states = states_before(deps().runner, ts)
    together = _together(self, ts, index, parsed, last, states)
    out: list[str] = []
    for k, t in enumerate(ts):
        done = together.get(t.session_id)
        if isinstance(done, str):
            out.append(done)
            continue
        try:
            out.append(_run_one(self, t, index, parsed, last, states.get(t.session_id), done))
        except SoftTimeLimitExceeded:
            # The backstop fired (the tools' own limits did not): the hard
            # limit follows soon, so fail this session and those not yet run.
            for rest in ts[k:]:
                _time_limit(rest, index, self.request.id, len(ts))
            out += ["failed"] * (len(ts) - k)
            break
    settle(self, deps().runner, ts, out, before, f"step {index + 1}")
    return out

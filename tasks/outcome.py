"""A task whose session failed ends as a Celery FAILURE, after the record.

Operators watch Celery, not only the event store: Flower's Failed tab, the
`celery_task_failed` counters and the usual alerts all key on a task's
state. So a task in which a session ended failed raises `StepFailed` once
the failure is recorded (the runner already appended SessionFailed and told
the job stream); it does not return the string "failed" as a success.

Raising must not change what runs:
- `StepFailed` is not transient, so `tasks.steps` never retries it, and the
  app acks a failed task (`task_acks_on_failure_or_timeout`): no redelivery.
  A redelivery for another reason finds the session finished before it ran
  and returns quietly: only the task in which a session *ended* fails, and
  not when its job's cancel ended it (the operator asked for that).
- Celery stops a chain at a failed link. The links this task's sessions no
  longer need are dropped; what still has work is sent on: the rest of the
  chain when another session of a chunk goes on, else only the chain's
  tail (the digest signing, an agent's first turn, which ends and signs a
  failed session as well).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery.canvas import signature

from orchestrator.run.runner import CANCELLED
from orchestrator.run.ticket import Ticket

# Links of a chain that run a step: dropped once their sessions ended.
STEP_TASKS = frozenset({"orchestrator.run_step", "orchestrator.run_steps"})
ENDED = frozenset({"completed", "failed"})


class StepFailed(Exception):
    """A session ended failed in this task; its events are recorded.

    The message says which session, at which step, and why (the recorded
    error). Celery stores it as the task's FAILURE; it is never retried."""


def finished_before(runner: Any, tickets: Sequence[Ticket]) -> frozenset[str]:
    """The sessions among `tickets` that had ended before this task ran
    (none when the store cannot say: the step's own read meets the same
    error and retries it; at worst a leftover link fails visibly)."""
    return states_before(runner, tickets)[0]


def states_before(runner: Any, tickets: Sequence[Ticket]) -> tuple[frozenset[str], dict[str, Any]]:
    """`finished_before`, and each session's state as that read found it: the
    step starts from it rather than reading the stream again a moment later
    (a stale one only makes its first append conflict, and the runner reloads);
    the same reads bring the job's cancel requests for the step's check. The
    sessions the runner holds no fold of (a chunk's new streams) are read in
    one query (`Runner.load_many`)."""
    try:
        states = runner.load_many([(t.session_id, t.job_id) for t in tickets])
    except Exception:
        return frozenset(), {}
    return frozenset(sid for sid, s in states.items() if s.session.finished), states


def settle(
    task: Any,
    runner: Any,
    tickets: Sequence[Ticket],
    statuses: Sequence[str],
    before: frozenset[str],
    what: str,
) -> None:
    """Raise `StepFailed` when a session of `tickets` ended failed in this
    task (`statuses` after it, `before`: those finished already); first send
    on what of the chain still has work. `what` names the step ("step 2")."""
    ended = [t for t, st in zip(tickets, statuses) if st == "failed" and t.session_id not in before]
    errors = {t.session_id: runner.load(t.session_id).session.error or "failed" for t in ended}
    # A session its job's cancel ended is what the operator asked for: no alert.
    failed = [t for t in ended if not errors[t.session_id].startswith(CANCELLED)]
    if not failed:
        return
    going_on = any(st not in ENDED for st in statuses)
    _forward(task, keep_steps=going_on)
    why = "; ".join(f"session {t.session_id} ({t.target}): {errors[t.session_id]}" for t in failed)
    raise StepFailed(f"{what} of job {failed[0].job_id} failed: {why}")


def _forward(task: Any, *, keep_steps: bool) -> None:
    """Send on the rest of this task's chain (`keep_steps`) or only its
    non-step links, then clear it so Celery neither sends it nor marks it
    failed."""
    rest = list(task.request.chain or ())  # Celery keeps it last-first
    if not keep_steps:
        rest = [link for link in rest if link.get("task") not in STEP_TASKS]
    task.request.chain = None
    if rest:
        signature(rest[-1], app=task.app).apply_async(
            chain=rest[:-1], parent_id=task.request.id, root_id=task.request.root_id
        )

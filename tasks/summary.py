"""What Flower, the worker log and task events show of a task's arguments.

Celery puts `argsrepr`/`kwargsrepr` in every message, in the `task-sent` and
`task-received` events and in the worker's log lines; by default they are a
`repr` of the arguments, which for this project's tasks means the ticket's
whole policy, an agent's scripted turns and a write step's file content.
Instead each `orchestrator.*` task shows a short, masked summary: the job,
the target, the step or tool, then the session (or how many): what an
operator looks for comes before Flower's column cuts the line off.

Two places set it: the signatures `tasks.dispatch` builds (`summarized`),
and `SummarizingAMQP`, the app's message factory, for every message sent
without one (a task re-enqueueing itself, a retry, a `send_task` from a
shell). An `orchestrator.*` task this module does not know shows only how
many arguments it got: nothing is shown that was not chosen to be.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from celery.app.amqp import AMQP
from celery.canvas import Signature

from orchestrator.guard.masking import mask

__all__ = ["describe", "options", "summarized", "SummarizingAMQP"]

PREFIX = "orchestrator."
MAX_FIELD = 80  # a target or step name longer than this is cut
MAX_SESSIONS_SHOWN = 3


def _short(value: object, secrets: Sequence[str] = ()) -> str:
    """One field: masked on its own (so a mask never swallows what follows it),
    on one line, cut to MAX_FIELD."""
    text = mask(" ".join(str(value).split()), secrets)
    return text if len(text) <= MAX_FIELD else text[: MAX_FIELD - 1] + "…"


def _ticket(t: Any, secrets: Sequence[str], what: str) -> list[str]:
    """Job, target and `what` (the step) first, the session last: Flower's
    column shows the start of the line and an operator looks for the job,
    the target and the step."""
    if not isinstance(t, Mapping):
        return ["ticket=?", what]
    return [
        f"job={_short(t.get('job_id'))}",
        f"target={_short(t.get('target'), secrets)}",
        what,
        f"session={_short(t.get('session_id'))}",
    ]


def _step(index: Any, step: Any, secrets: Sequence[str]) -> str:
    kind = step.get("kind", "?") if isinstance(step, Mapping) else "?"
    name = step.get("name") if isinstance(step, Mapping) else None
    number = index + 1 if isinstance(index, int) else "?"
    return f"step={number} {_short(kind)}" + (f" ({_short(name, secrets)})" if name else "")


def _run_steps(tickets: Any) -> list[str]:
    """[job, sessions] of a chunk."""
    if not isinstance(tickets, Sequence) or not tickets:
        return ["job=?", "sessions=?"]
    ids = [_short(t.get("session_id")) if isinstance(t, Mapping) else "?" for t in tickets]
    shown = ", ".join(ids[:MAX_SESSIONS_SHOWN]) + (", …" if len(ids) > MAX_SESSIONS_SHOWN else "")
    job = tickets[0].get("job_id") if isinstance(tickets[0], Mapping) else "?"
    return [f"job={_short(job)}", f"sessions={len(ids)} [{shown}]"]


def _parts(
    name: str, args: Sequence[Any], kwargs: Mapping[str, Any], secrets: Sequence[str]
) -> list[str] | None:
    a = list(args)
    if name == "orchestrator.run_step" and len(a) >= 3:
        return _ticket(a[0], secrets, _step(a[1], a[2], secrets))
    if name == "orchestrator.run_steps" and len(a) >= 3:
        job, sessions = _run_steps(a[0])
        return [job, _step(a[1], a[2], secrets), sessions]
    if name == "orchestrator.agent_advance" and a:
        return _ticket(a[0], secrets, "agent turn")
    if name == "orchestrator.audit.sign_heads":
        streams = a[0] if a else kwargs.get("streams")
        return [f"streams={len(streams) if isinstance(streams, Sequence) else 'changed'}"]
    return None


def describe(
    name: str,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    secrets: Sequence[str] = (),
) -> tuple[str, str]:
    """(argsrepr, kwargsrepr) for task `name`: a masked summary (pure)."""
    args, kwargs = args or (), kwargs or {}
    parts = _parts(name, args, kwargs, secrets)
    if parts is None:
        shown = f"{len(args)} argument(s) not shown"
        return shown, (f"{len(kwargs)} keyword argument(s) not shown" if kwargs else "{}")
    return " ".join(parts), "{}"


def _secrets(app: Any) -> tuple[str, ...]:
    """The secret values the app's composition root (`tasks.app.make_app`)
    said to mask: its settings' and those read in this process."""
    known = getattr(app, "known_secrets", None)
    return tuple(known()) if known is not None else ()


def options(
    name: str,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None = None,
    secrets: Sequence[str] = (),
) -> dict[str, str]:
    """`argsrepr`/`kwargsrepr` options for sending task `name`."""
    argsrepr, kwargsrepr = describe(name, args, kwargs, secrets)
    return {"argsrepr": argsrepr, "kwargsrepr": kwargsrepr}


def summarized(sig: Signature) -> Signature:
    """`sig` with its summary in its options (kept through chains and groups)."""
    return sig.set(**options(sig.task, sig.args, sig.kwargs, _secrets(sig.app)))


class SummarizingAMQP(AMQP):
    """The app's message factory: `orchestrator.*` messages sent without a
    summary get one, so no send path shows whole arguments."""

    def as_task_v2(
        self,
        task_id: str,
        name: str,
        args: Any = None,
        kwargs: Any = None,
        *rest: Any,
        argsrepr: str | None = None,
        kwargsrepr: str | None = None,
        **more: Any,
    ) -> Any:
        if name.startswith(PREFIX) and (argsrepr is None or kwargsrepr is None):
            summary = options(name, args, kwargs, _secrets(self.app))
            argsrepr = summary["argsrepr"] if argsrepr is None else argsrepr
            kwargsrepr = summary["kwargsrepr"] if kwargsrepr is None else kwargsrepr
        return super().as_task_v2(
            task_id, name, args, kwargs, *rest, argsrepr=argsrepr, kwargsrepr=kwargsrepr, **more
        )

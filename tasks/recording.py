"""The worker's side of `orchestrator.run.recording`: its spool, its sweeper.

- `flush_session` runs before a session's step: a failure waiting in the
  spool for that session is recorded first, so a retried task finds the
  session failed with the reason instead of failing its call as interrupted;
- `fail_or_spool` records that a session cannot go on, or spools that
  failure when the store cannot take it either: once the store is back the
  session ends `failed` instead of `running` forever;
- the sweeper (a thread of the worker's main process, from `worker_ready`)
  flushes the whole spool every `spool_sweep_interval_s`.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import signals
from celery.utils.log import get_logger

from events.errors import StoreUnavailable
from orchestrator.run import recording
from orchestrator.run.failing import fail_session
from orchestrator.run.runner import Ticket
from tasks.deps import deps

log = get_logger(__name__)


def _fail(entry: dict[str, Any]) -> None:
    t = Ticket.model_validate({"steps": (), **entry["ticket"]})
    fail_session(deps().runner, t, entry["error"], entry["message"])


def flush_session(t: Ticket) -> int:
    """Record the session's spooled failure (StoreUnavailable: not yet);
    returns how many entries it recorded."""
    spool = deps().spool
    if spool.folder.is_dir():
        return recording.flush(spool, _fail, stream=t.session_id)
    return 0


def fail_or_spool(t: Ticket, error: str, message: str, task_id: str | None) -> None:
    """`fail_session`, or its spooled promise while the store is unavailable."""
    d = deps()
    try:
        fail_session(d.runner, t, error, message, task_id)
    except StoreUnavailable as exc:
        where = d.spool.put_failure(
            t.session_id, t.job_id, t.model_dump(mode="json"), error, message
        )
        log.error(
            "store unavailable: the failure of session %s waits in %s until it is back (%s)",
            t.session_id,
            where,
            exc,
        )


def sweep() -> int:
    """Flush the whole spool once; 0 when the store is still unavailable."""
    spool = deps().spool
    if not spool.folder.is_dir():
        return 0
    try:
        return recording.flush(spool, _fail)
    except StoreUnavailable:
        return 0


_stop = threading.Event()


def _loop(every: float) -> None:
    while not _stop.wait(every):
        try:
            done = sweep()
            if done:
                log.info("recorded %d spooled entries after a store outage", done)
        except Exception as exc:  # noqa: BLE001 - the sweeper must outlive any one round
            log.exception("spool sweep failed: %s", exc)


@signals.worker_ready.connect
def _start(**_: Any) -> None:
    if getattr(_start, "started", False):
        return
    _start.started = True  # type: ignore[attr-defined]
    every = deps().settings.spool_sweep_interval_s
    threading.Thread(target=_loop, args=(every,), name="orchestrator-spool", daemon=True).start()


@signals.worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    _stop.set()

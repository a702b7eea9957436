"""Signing digests of stream heads from the workers (`orchestrator.audit.sign_heads`).

Three triggers, one task body (`orchestrator.audit.digests.sign_changed`):
- the last link of every job chain (`tasks.dispatch`), when its sessions
  ended: their streams and the job's;
- every `audit_sign_interval_s`: by celery beat on a server broker
  (`celery -A tasks.app beat`, schedule in `tasks.app`), by the worker's
  own timer on the embedded broker (one worker there, no beat to run);
- the worker stopping: `orchestrator run` stops the worker it started as
  soon as the job is done, possibly before the chain's last link ran.

Signing is never part of a step: a missing key signs nothing (streams stay
UNPROVEN in `audit verify`), and a failure is logged, retried when it is
transient, and never fails a session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import signals
from celery.utils.log import get_logger, get_task_logger

from events.store import EventStore, SqlEventStore
from orchestrator.audit import digests as audit
from orchestrator.audit import protect
from orchestrator.config.settings import Settings
from orchestrator.errors import ConfigError
from tasks.app import app, sign_interval
from tasks.deps import deps

SIGN_HEADS = "orchestrator.audit.sign_heads"
log = get_task_logger(__name__)
worker_log = get_logger(__name__)  # outside tasks (the worker's main process)


def _key(settings: Settings) -> Any:
    """The signing key, or None (no key configured, or one that cannot be loaded:
    logged, since signing must not stop the worker)."""
    try:
        return audit.signing_key(settings)
    except ConfigError as exc:
        worker_log.error("not signing digests: %s", exc)
        return None


def _sign(store: EventStore, settings: Settings, streams: Sequence[str]) -> str:
    key = _key(settings)
    if key is None:
        return "no signing key"
    event = audit.sign_changed(store, key, settings.worker_actor, streams)
    if event is None:
        return "every head was signed already"
    return f"signed {len(event.payload.heads)} stream head(s) (audit-digests seq {event.seq})"


@app.task(
    bind=True,
    name=SIGN_HEADS,
    acks_late=True,
    ignore_result=True,
    max_retries=5,
    soft_time_limit=120,
    time_limit=180,
)
def sign_heads(self: Any, streams: list[str] | None = None) -> str:
    """Sign the heads of every stream changed since the last digest, and of `streams`."""
    try:
        return _sign(deps().store, deps().settings, streams or ())
    except Exception as exc:
        if getattr(exc, "transient", False) and self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=min(2**self.request.retries, 30)) from exc
        log.exception("signing a digest of stream heads failed: %s", exc)
        return "failed"


@signals.worker_ready.connect
def _embedded_schedule(sender: Any, **_: Any) -> None:
    """On the embedded broker the worker enqueues the periodic task itself."""
    settings = deps().settings
    every = sign_interval(settings)
    if settings.embedded_broker and every is not None:
        sender.timer.call_repeatedly(every, lambda: sign_heads.apply_async(expires=every))


@signals.worker_shutdown.connect
def _sign_on_stop(**_: Any) -> None:
    """Sign what changed as the worker stops (after its last task finished)."""
    settings = deps().settings
    if settings.audit_key_file is None:
        return
    try:
        store = SqlEventStore(settings.effective_store_url, filters=protect.event_filters(settings))
        try:
            worker_log.info("digest as the worker stops: %s", _sign(store, settings, ()))
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001 - stopping must go on; the next digest covers it
        worker_log.error("signing a digest as the worker stops failed: %s", exc)

"""Celery signal handlers for logs, metrics and traces (imported by tasks.app).

- `setup_logging`: Celery leaves logging to us (a receiver exists), so the
  worker's own lines and every library's are structlog lines too, to
  `--logfile` when given.
- `celeryd_init` (worker main process, before the pool forks): the
  Prometheus multiprocess folder, in the environment before any child
  imports prometheus_client.
- `worker_process_init` (each prefork child, after the fork): logging again
  (a fresh handler), metrics reporters, the tracer provider and the Celery
  instrumentation; `worker_process_shutdown` flushes and marks the child dead.
- `before_task_publish` (whoever sends: the CLI, the API, a task enqueueing
  the next): the job and session ids of the sender's context go into the
  message's `orch_ids` header. `task_prerun` binds them and the task id in
  the worker; `task_postrun` clears the context. Turn and tool-call ids are
  not carried: they name the unit of work the receiving task does, and the
  runner and agent loop bind them when they know it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from celery import signals

from orchestrator.config.settings import get_settings
from orchestrator.ops import logs, metrics, tracing

HEADER = "orch_ids"
CARRIED = ("job_id", "session_id")
log = logs.get_logger("orchestrator.tasks")
_started: dict[str, float] = {}


@signals.setup_logging.connect(weak=False)
def _setup_logging(loglevel: Any = None, logfile: Any = None, **_: Any) -> None:
    logs.configure(get_settings(), logfile=logfile or None, level=loglevel)


@signals.celeryd_init.connect(weak=False)
def _worker_main(**_: Any) -> None:
    s = get_settings()
    if "prometheus" not in s.metrics_reporters:
        return
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        if "prometheus_client" in sys.modules:
            log.warning(
                "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was "
                "set: each prefork child will count alone. Start workers with "
                "`orchestrator worker`, or set PROMETHEUS_MULTIPROC_DIR"
            )
            return
        path = str(s.effective_metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    metrics.prepare_dir(Path(path))


@signals.worker_process_init.connect(weak=False)
def _child_init(**_: Any) -> None:
    s = get_settings()
    metrics.setup(s)
    tracing.setup(s, celery=True)


@signals.worker_process_shutdown.connect(weak=False)
def _child_down(pid: int | None = None, **_: Any) -> None:
    metrics.shutdown()
    tracing.shutdown()
    metrics.mark_dead(pid or os.getpid())


@signals.before_task_publish.connect(weak=False)
def _publish(headers: dict[str, Any] | None = None, body: Any = None, **_: Any) -> None:
    if headers is None:
        return
    ids = {k: v for k, v in logs.correlation_ids().items() if k in CARRIED}
    ids = {**_ticket_ids(body), **ids} if not ids.get("session_id") else ids
    if ids:
        headers[HEADER] = ids
    log.debug(
        "task published",
        task=headers.get("task"),
        published_task_id=headers.get("id"),
        carried=ids or None,
    )


def _ticket_ids(body: Any) -> dict[str, str]:
    """job and session of a task whose first argument is one session's ticket."""
    try:
        args = body[0] if isinstance(body, (tuple, list)) else ()
        first = args[0] if args else None
    except (IndexError, KeyError, TypeError):
        return {}
    return logs.ids_from(first) if isinstance(first, dict) else {}


@signals.task_prerun.connect(weak=False)
def _prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    logs.clear()
    request = getattr(task, "request", None)
    carried = getattr(request, HEADER, None) or (getattr(request, "headers", None) or {}).get(
        HEADER
    )
    logs.bind(**logs.ids_from(carried), task_id=task_id)
    if task_id:
        _started[task_id] = time.perf_counter()
    log.info(
        "task started",
        task=getattr(task, "name", None),
        retries=getattr(request, "retries", 0) or None,
    )


@signals.task_postrun.connect(weak=False)
def _postrun(
    task_id: str | None = None,
    task: Any = None,
    state: str | None = None,
    retval: Any = None,
    **_: Any,
) -> None:
    began = _started.pop(task_id or "", None)
    log.info(
        "task finished",
        task=getattr(task, "name", None),
        state=state,
        outcome=retval if isinstance(retval, str) else None,
        seconds=round(time.perf_counter() - began, 6) if began is not None else None,
    )
    logs.clear()

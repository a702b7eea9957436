"""Redelivering a dead worker's steps within seconds, not the broker's hour.

A worker killed without a clean stop (kill -9, OOM, a lost machine) leaves
its messages unacknowledged: Redis hands them out again only after the
visibility timeout (an hour by default, ~1.9 times it as measured), the
embedded broker after the same. Its heartbeat's in-flight record says which
sessions it was running (orchestrator.ops.heartbeat); every live worker
checks those records each `worker_heartbeat_interval_s` and, for one that
stopped being renewed more than `worker_heartbeat_max_age_s` ago, claims it
(one worker wins) and re-enqueues each of its unfinished sessions from the
step it was on, rebuilt from the store (orchestrator.service.resume).

The runner's idempotency keys make the broker's own late redelivery (and
any duplicate) harmless: a recorded step is not recorded twice, and a call
that started on the dead worker is finished, re-run (idempotent steps) or
failed as interrupted, each recorded.

RabbitMQ needs none of this (its consumers' connections die with them and
their messages return at once); it runs all the same.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from celery import signals
from celery.utils.log import get_logger

from orchestrator.errors import OrchestratorError
from orchestrator.ops import heartbeat
from orchestrator.service import resume
from tasks.app import dispatcher
from tasks.deps import deps

log = get_logger(__name__)
_stop = threading.Event()


def reap(hostname: str, now: float | None = None) -> int:
    """Claim dead workers' in-flight records and re-enqueue their sessions;
    returns how many sessions were sent again."""
    d = deps()
    sent = 0
    for beat in heartbeat.claim_stale(d.settings, time.time() if now is None else now, hostname):
        wanted: dict[str, set[str]] = {}
        for entry in beat.active:
            job_id, _, session_id = entry.partition("/")
            wanted.setdefault(job_id, set()).add(session_id)
        for job_id, sessions in wanted.items():
            try:
                plan = resume.plan(d.store, job_id, base_dir=Path("/"))
            except OrchestratorError as exc:  # finished meanwhile, or unknown
                log.info("worker %s died; job %s: %s", beat.hostname, job_id, exc)
                continue
            for r in plan:
                if r.ticket.session_id in sessions:
                    dispatcher(d.settings).continue_session(r.ticket, r.start, r.steps)
                    sent += 1
        log.warning(
            "worker %s stopped beating %.0f s ago with %d session(s) in flight: "
            "re-enqueued %d of them",
            beat.hostname,
            time.time() - beat.at,
            len(beat.active),
            sent,
        )
    return sent


def _loop(hostname: str, every: float) -> None:
    while not _stop.wait(every):
        try:
            reap(hostname)
        except Exception as exc:  # noqa: BLE001 - the reaper must outlive any one round
            log.warning("reaping dead workers' steps failed this round: %s", exc)


@signals.worker_ready.connect
def _start(sender: Any, **_: Any) -> None:
    if getattr(_start, "started", False):
        return
    _start.started = True  # type: ignore[attr-defined]
    every = deps().settings.worker_heartbeat_interval_s
    threading.Thread(
        target=_loop, args=(sender.hostname, every), name="orchestrator-reaper", daemon=True
    ).start()


@signals.worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    _stop.set()

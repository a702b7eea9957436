"""The Celery settings every worker and client of ours runs with beyond
Celery's defaults (`tasks.app` adds those that depend on the Settings).

A module of its own, importing nothing, so the dispatch bench's bare Celery
peer can run with exactly these (bench/dispatch.py) without `tasks.app`'s
signal handlers.
"""

from __future__ import annotations

# Crash safety (late acks, a lost worker's message redelivered, one message
# prefetched: DESIGN.md "Execution") and the task events Flower shows.
CELERY_SETTINGS: dict[str, object] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "task_acks_on_failure_or_timeout": True,
    "worker_prefetch_multiplier": 1,
    "task_track_started": False,
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_expires": 24 * 3600,
    "worker_send_task_events": True,  # Flower shows tasks live
    "task_send_sent_event": True,
}

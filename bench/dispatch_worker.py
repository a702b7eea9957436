"""The dispatch bench's worker of ours: `tasks.app` (its settings, signal
handlers, task-events consumer and step tasks) plus one no-op task.

`celery -A bench.dispatch_worker` serves the bench's steps and, alternating
with them, `bench.ours_noop`: the same worker and app doing no work, which
tells what our framework around a task costs (against the bare peers) from
what the step itself costs (against this no-op).
"""

from __future__ import annotations

from tasks.app import app

__all__ = ["app"]


@app.task(name="bench.ours_noop")
def ours_noop() -> None:
    return None

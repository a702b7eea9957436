"""Task events for Flower at a fraction of their cost: sent together.

With task events on, a worker's main process buffers each task's
`task-received`, `task-started` and `task-succeeded` and, as stock Celery
does, publishes the buffer on the event loop's next turn: three Redis
PUBLISHes a task (each on a new client object), the first of them before
the task's message is written to the pool child. On a worker running short
steps that was 43% of the main process's busy time (py-spy, dispatch bench).

This consumer publishes the buffer `FLUSH_AFTER_S` after its first event
instead, so the events of the tasks of that moment go out as one
`task.multi` message (Celery's own batch format, which Flower and every
`EventReceiver` read event by event), and not before the task's message
is on its way to the pool child.
Celery still publishes at once when the buffer holds `buffer_limit` (24)
events. The worker flushes the buffer when its consumer stops, so a worker
that shuts down does not keep its last tasks' end states from Flower.
"""

from __future__ import annotations

import contextlib
import threading

from celery.worker.consumer import Consumer

FLUSH_AFTER_S = 0.1  # how late Flower may learn of a task's state change


class CoalescingConsumer(Consumer):  # type: ignore[misc]
    """`celery.worker.consumer.Consumer`, its task events published together
    (`worker_consumer` of `tasks.app`)."""

    _flush_due = False

    def on_send_event_buffered(self) -> None:
        hub = self.hub
        if hub is None:
            return
        if threading.get_ident() != getattr(hub, "_loop_thread", None):
            # The hub's timer is the loop thread's: from elsewhere, as Celery does.
            hub.call_soon(self._flush_events_promise)
        elif not self._flush_due:
            self._flush_due = True
            hub.call_later(FLUSH_AFTER_S, self._flush_coalesced)

    def _flush_coalesced(self) -> None:
        self._flush_due = False
        self._flush_events()

    def _flush_before(self) -> None:
        """Publish what is buffered (offline: Celery keeps it for the next
        connection)."""
        self._flush_due = False
        with contextlib.suppress(Exception):
            self._flush_events()

    def stop(self) -> None:
        self._flush_before()
        super().stop()

    def shutdown(self) -> None:
        self._flush_before()
        super().shutdown()

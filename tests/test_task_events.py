"""A worker's task events, published together (`tasks.task_events`), still
reach an event receiver (what Flower runs) whole: every task's received,
started and end state, including those of the last tasks before the worker
stops."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.cli_helpers import cli, shape_env
from tests.ops_helpers import private_redis, start_worker, stop, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.redis]

SPEC = """\
name: events-together
tier: read-write
targets: [ws]
steps:
  - {kind: read, name: first, path: mod.py}
  - {kind: read, name: second, path: mod.py}
  - {kind: read, name: third, path: mod.py}
"""


class Listener:
    """A Celery event receiver on its own thread, as Flower's."""

    def __init__(self, broker: str) -> None:
        self.app = Celery("listener", broker=broker)
        self.events: list[dict[str, Any]] = []
        self.multi = 0  # task.multi messages: several events in one
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection() as conn:
            recv = self.app.events.Receiver(conn, handlers={"*": self.events.append})
            real = recv._receive

            def counting(body: Any, message: Any, **kw: Any) -> Any:
                if isinstance(body, list) and len(body) > 1:
                    self.multi += 1
                return real(body, message, **kw)

            recv._receive = counting  # type: ignore[method-assign]
            recv.on_consume_ready = lambda *_, **__: self.ready.set()  # type: ignore[method-assign]
            self._receiver = recv
            recv.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        receiver = getattr(self, "_receiver", None)
        if receiver is not None:
            receiver.should_stop = True
        self._thread.join(timeout=10)

    def states(self, task_id: str) -> list[str]:
        return [e["type"] for e in self.events if e.get("uuid") == task_id]


def test_each_task_shows_received_started_and_its_end_after_the_worker_stops(
    tmp_path: Path,
) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "mod.py").write_text("x = 1\n")
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC)
    with private_redis() as redis_server:
        env = shape_env(tmp_path, broker_url=redis_server.url)
        with Listener(redis_server.url) as listener:
            assert listener.ready.wait(10), "the event receiver did not start"
            worker = start_worker(env, tmp_path / "worker.log", name="events")
            try:
                result = cli(
                    env, "run", str(spec), "--base-dir", str(tmp_path), "--json", "--timeout", "120"
                )
                assert result.returncode == 0, result.stdout + result.stderr
                assert json.loads(result.stdout)["status"] == "completed"
            finally:
                stop(worker)  # at once: the last step's end may still be buffered

            def steps() -> list[str] | None:
                ids = [
                    e["uuid"]
                    for e in listener.events
                    if e["type"] == "task-received" and e.get("name") == "orchestrator.run_step"
                ]
                done = [i for i in ids if "task-succeeded" in listener.states(i)]
                return ids if len(ids) == 3 and len(done) == 3 else None

            ids = wait_until("the three steps' events", steps, timeout=30, every=0.2)
    for task_id in ids:
        seen = listener.states(task_id)
        assert seen.index("task-received") < seen.index("task-started"), seen
        assert seen.index("task-started") < seen.index("task-succeeded"), seen
        assert seen.count("task-succeeded") == 1, seen
    # Published together: Celery's batch format carried several events at once.
    assert listener.multi >= 1

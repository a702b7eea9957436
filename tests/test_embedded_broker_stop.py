"""The embedded broker lets a worker that was told to stop stop: a consumer
waiting for work returns to Celery's loop (which checks the stop flag only
between two `drain_events`) instead of waiting on for the next message."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from celery.worker import state as worker_state
from kombu import Connection, Queue

import tasks.broker  # noqa: F401  (registers orchsqla)


@pytest.fixture
def stop_flag():
    saved = worker_state.should_stop, worker_state.should_terminate
    yield
    worker_state.should_stop, worker_state.should_terminate = saved


def _drain_forever(url: str, out: list[BaseException]) -> None:
    with Connection(url) as conn:
        queue = Queue("orchestrator", channel=conn.default_channel)
        queue.declare()
        with conn.Consumer(queue, callbacks=[lambda body, msg: msg.ack()]):
            try:
                conn.drain_events()  # no timeout: only a message or the stop flag ends it
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                out.append(exc)


@pytest.mark.parametrize("flag", ["should_stop", "should_terminate"])
def test_a_waiting_consumer_returns_once_the_worker_must_stop(
    tmp_path: Path, stop_flag: None, flag: str
) -> None:
    url = f"orchsqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    out: list[BaseException] = []
    t = threading.Thread(target=_drain_forever, args=(url, out), daemon=True)
    t.start()
    t.join(0.5)
    assert t.is_alive(), "it waits while there is no work and no stop"
    # A warm shutdown's flag is its exit code, 0: falsy, but set.
    setattr(worker_state, flag, 0)
    t.join(60)
    assert not t.is_alive()
    assert len(out) == 1 and isinstance(out[0], TimeoutError)

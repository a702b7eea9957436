"""The embedded broker wakes every waiting consumer, and loses no wake-up
meant for a consumer that was busy when it came (`tasks.broker`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from kombu import Connection, Queue

from tasks import broker


def _folder(tmp_path: Path) -> str:
    path = broker.wake_path(f"sqlite:///{tmp_path / 'broker.sqlite'}")
    assert path is not None
    return path


def test_a_wake_up_reaches_each_consumer_even_after_another_took_its_own(
    tmp_path: Path,
) -> None:
    folder = _folder(tmp_path)
    first, second = broker._Waker(folder), broker._Waker(folder)
    try:
        broker.wake(folder)
        assert first.wait(5)
        # The second consumer was busy (not waiting) when the wake-up came:
        # it still finds it. With one FIFO for all, the first had read it and
        # this wait slept its whole timeout.
        assert second.wait(5)
        assert not second.wait(0)  # read once, then gone
    finally:
        first.close()
        second.close()
    assert os.listdir(folder) == []


def test_a_consumer_that_died_without_closing_is_forgotten(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    os.makedirs(folder)
    os.mkfifo(os.path.join(folder, "4242-dead"))  # nobody holds it open
    alive = broker._Waker(folder)
    try:
        broker.wake(folder)
        assert alive.wait(5)
        assert os.listdir(folder) == [os.path.basename(alive.path)]
    finally:
        alive.close()


def test_a_message_reaches_its_consumer_while_others_wait_on_the_same_broker(
    tmp_path: Path,
) -> None:
    """Three consumers of three queues on one broker file, each with its own
    connection (as three workers have): each gets the message sent to it."""
    url = f"orchsqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    got: dict[str, list[object]] = {}
    ready = threading.Barrier(4)

    def consume(name: str) -> None:
        with Connection(url) as conn:
            queue = Queue(name, channel=conn.default_channel)
            queue.declare()

            def on(body: object, message: object) -> None:
                got.setdefault(name, []).append(body)
                message.ack()  # type: ignore[attr-defined]

            with conn.Consumer(queue, callbacks=[on]):
                ready.wait(30)
                conn.drain_events(timeout=60)

    threads = [threading.Thread(target=consume, args=(f"q{i}",), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    ready.wait(30)
    with Connection(url) as conn:
        producer = conn.Producer()
        for i in range(3):
            producer.publish({"to": i}, routing_key=f"q{i}", serializer="json")
    for t in threads:
        t.join(60)
    assert got == {f"q{i}": [{"to": i}] for i in range(3)}


def test_a_consumer_that_exits_without_closing_removes_its_fifo(tmp_path: Path) -> None:
    """Celery's warm shutdown does not always close the broker connection:
    the FIFO goes at the process's exit (and not when a forked child exits)."""
    import subprocess
    import sys

    folder = _folder(tmp_path)
    code = (
        "import os, sys; from tasks import broker\n"
        "w = broker._Waker(sys.argv[1])\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    sys.exit(0)  # a child's exit leaves the consumer's FIFO\n"
        "os.waitpid(pid, 0)\n"
        "assert os.listdir(sys.argv[1]) == [os.path.basename(w.path)]\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code, folder], check=True, timeout=60, cwd=root)
    assert os.listdir(folder) == []


def test_a_wake_up_writes_to_fifos_only(tmp_path: Path) -> None:
    """Whatever else lands in the wake folder (a file, a symlink to one) is
    neither written to nor followed."""
    folder = _folder(tmp_path)
    os.makedirs(folder)
    target = tmp_path / "precious.txt"
    target.write_bytes(b"keep me")
    (Path(folder) / "file").write_bytes(b"keep me too")
    os.symlink(target, os.path.join(folder, "link"))
    broker.wake(folder)
    assert target.read_bytes() == b"keep me"
    assert (Path(folder) / "file").read_bytes() == b"keep me too"


@pytest.mark.parametrize("consumers", [1, 3, 8])
def test_every_consumer_finds_each_wake_up_whenever_it_next_waits(
    tmp_path: Path, consumers: int
) -> None:
    """Any number of consumers, each waiting at its own moment after a series
    of wake-ups: each finds one (however many came), then none."""
    folder = _folder(tmp_path)
    wakers = [broker._Waker(folder) for _ in range(consumers)]
    try:
        for _ in range(5):
            broker.wake(folder)
        for waker in reversed(wakers):  # the last made is the first to look
            assert waker.wait(5)
            assert not waker.wait(0)
    finally:
        for waker in wakers:
            waker.close()
    assert os.listdir(folder) == []

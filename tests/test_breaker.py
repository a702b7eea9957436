"""Circuit breakers shared by two real worker processes: 5xx answers in one
open the circuit for both, the other fails fast without a request, a probe
after the reset timeout closes it again; on Redis (db 5) and on the state
folder's SQLite file. Transitions are recorded once on `circuit:<host>`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from events.store import open_store
from tests.cli_helpers import ROOT
from tests.conftest import redis_db_url
from tests.netserver import NetServer

REDIS_DB = 5
REDIS_URL = redis_db_url(REDIS_DB)

WORKER = r"""
import json, sys
from pathlib import Path
from events.store import open_store
from orchestrator.config.settings import Settings
from orchestrator.tools.web.breaker import breakers_for, record_transition, CircuitOpen
from orchestrator.tools.web.fetch import fetch, FetchLimits, FetchFailed
from orchestrator.guard.policy import Network

args = json.loads(sys.argv[1])
settings = Settings(state_dir=Path(args["state"]), broker_url=args["broker"],
                    breaker_failure_threshold=3, breaker_reset_timeout_s=2)
store = open_store(args["store"])
def changed(host, previous, state, failures, opened_at):
    record_transition(store, args["name"], host, previous, state, failures, opened_at, 2)
breakers = breakers_for(settings, on_change=changed)
net = Network(enabled=True, allow_private=("127.0.0.1",))
for line in sys.stdin:
    try:
        r = fetch(line.strip(), net, breakers=breakers, secrets=(),
                  limits=FetchLimits(attempts=1))
        out = {"outcome": "ok", "status": r.status}
    except CircuitOpen as exc:
        out = {"outcome": "open", "message": str(exc)}
    except FetchFailed as exc:
        out = {"outcome": "failed", "message": str(exc)}
    out["state"] = breakers.state("127.0.0.1")
    print(json.dumps(out), flush=True)
"""


class Worker:
    def __init__(self, name: str, args: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps({**args, "name": name})],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def get(self, url: str) -> dict[str, str]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(url + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=20)


@pytest.fixture(params=["state-folder", pytest.param("redis", marks=pytest.mark.redis)])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    broker = ""
    if request.param == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            client.ping()
        except Exception as exc:  # noqa: BLE001
            from tests.conftest import unavailable

            unavailable("Redis", exc)
        for key in client.scan_iter("pybreaker:orch:breaker:*"):
            client.delete(key)
        broker = REDIS_URL
    store_path = tmp_path / "events.sqlite"
    open_store(str(store_path), upgrade=True).close()
    return {
        "state": str(tmp_path / "state"),
        "broker": broker or None,  # type: ignore[dict-item]
        "store": str(store_path),
    }


def test_a_breaker_opens_and_closes_across_two_worker_processes(
    shared: dict[str, str], tmp_path: Path
) -> None:
    with NetServer() as server:
        url = server.url("/flaky")
        a, b = Worker("worker:a", shared), Worker("worker:b", shared)
        try:
            assert a.get(url)["outcome"] == "ok" and b.get(url)["outcome"] == "ok"
            server.down = True
            assert [a.get(url)["outcome"] for _ in range(2)] == ["failed", "failed"]
            third = b.get(url)  # the third failure in a row, in the other process
            assert third["outcome"] == "failed" and third["state"] == "open"
            hits = server.hits["/flaky"]
            fast = a.get(url)  # open for worker a too: no request is sent
            assert fast["outcome"] == "open" and server.hits["/flaky"] == hits
            assert "one probe will be let through at" in fast["message"]
            server.down = False
            time.sleep(3.1)  # past the 2 s reset timeout (Redis keeps seconds)
            probe = b.get(url)
            assert probe["outcome"] == "ok" and probe["state"] == "closed"
            assert a.get(url) == {"outcome": "ok", "status": 200, "state": "closed"}
        finally:
            a.close()
            b.close()
    store = open_store(shared["store"])
    try:
        changes = [
            (e.payload.previous, e.payload.state) for e in store.read_stream("circuit:127.0.0.1")
        ]
    finally:
        store.close()
    assert changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_an_open_circuit_fails_fast_and_says_when_it_retries(tmp_path: Path) -> None:
    from orchestrator.tools.web.breaker import Breakers, CircuitOpen, SqliteStorage

    seen: list[tuple[str, str]] = []
    breakers = Breakers(
        lambda h: SqliteStorage(tmp_path / "b.sqlite", h),
        fail_max=2,
        reset_timeout_s=60,
        on_change=lambda h, old, new, n, at: seen.append((old, new)),
    )

    def boom() -> None:
        raise ConnectionError("refused")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            breakers.call("example.test", boom)
    with pytest.raises(CircuitOpen) as info:
        breakers.call("example.test", lambda: "never runs")
    assert info.value.transient and 55 < (info.value.retry_after_s or 0) <= 60
    assert "example.test failed 2 time(s) in a row" in str(info.value)
    assert seen == [("closed", "open")]

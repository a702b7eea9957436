"""Readiness follows the servers: a real worker on a private Redis and a
private PostgreSQL (both this test's own, so stopping them disturbs nobody);
`health.readiness` and the worker's /readyz go not-ready naming what went
down, and ready again once it is back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from events.store import open_store
from orchestrator.config.settings import Settings
from orchestrator.ops import health
from tests.cli_helpers import shape_env
from tests.ops_helpers import (
    PrivatePostgres,
    PrivateRedis,
    free_port,
    get,
    private_postgres,
    private_redis,
    start_worker,
    stop,
    wait_until,
)

pytestmark = [pytest.mark.slow]
MAX_AGE_S = "3"


class Deployment:
    def __init__(self, tmp_path: Path, redis: PrivateRedis, pg: PrivatePostgres) -> None:
        self.redis, self.pg = redis, pg
        self.port = free_port()
        self.settings = Settings(
            state_dir=tmp_path / "state",
            broker_url=redis.url,
            store_url=pg.url,
            worker_heartbeat_max_age_s=float(MAX_AGE_S),
        )
        self.env = shape_env(
            tmp_path,
            store_url=pg.url,
            broker_url=redis.url,
            ORCH_WORKER_PROBE_PORT=str(self.port),
            ORCH_WORKER_PROBE_ADDRESS="127.0.0.1",
            ORCH_WORKER_HEARTBEAT_INTERVAL_S="0.3",
            ORCH_WORKER_HEARTBEAT_MAX_AGE_S=MAX_AGE_S,
        )

    def readyz(self) -> tuple[int, Any]:
        return get(f"http://127.0.0.1:{self.port}/readyz", timeout=10)

    def wait_ready(self) -> None:
        wait_until("readiness", lambda: health.readiness(self.settings).ok, timeout=90)
        wait_until("the worker's /readyz", lambda: self.readyz()[0] == 200, timeout=90)

    def wait_not_ready(self, check: str) -> None:
        def deployment_failed() -> health.Report | None:
            report = health.readiness(self.settings)
            return report if check in report.to_json()["failed"] else None

        def worker_failed() -> dict[str, Any] | None:
            status, body = self.readyz()
            return body if status == 503 and check in body["failed"] else None

        report = wait_until(f"readiness to fail on {check}", deployment_failed, timeout=60)
        assert next(c for c in report.checks if c.name == check).remedy
        assert wait_until(f"/readyz to fail on {check}", worker_failed, timeout=60)["ok"] is False


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with private_redis() as redis, private_postgres() as pg:
        open_store(pg.url, upgrade=True).close()
        d = Deployment(tmp_path, redis, pg)
        proc = start_worker(d.env, tmp_path / "worker.log", name="flip")
        try:
            yield d
        finally:
            stop(proc)


def test_stopping_redis_makes_the_deployment_and_the_worker_not_ready_until_it_is_back(
    deployment: Deployment,
) -> None:
    deployment.wait_ready()
    deployment.redis.stop()
    deployment.wait_not_ready("broker")
    report = health.readiness(deployment.settings)
    broker = next(c for c in report.checks if c.name == "broker")
    assert "no answer to PING" in broker.detail and "start the broker" in broker.remedy
    deployment.redis.start()
    deployment.wait_ready()


def test_stopping_postgresql_makes_the_deployment_and_the_worker_not_ready_until_it_is_back(
    deployment: Deployment,
) -> None:
    deployment.wait_ready()
    deployment.pg.stop()
    deployment.wait_not_ready("store")
    report = health.readiness(deployment.settings)
    store = next(c for c in report.checks if c.name == "store")
    assert "cannot connect" in store.detail and "start the database" in store.remedy
    # The worker says so in its heartbeat too, once its next round ran.
    workers = wait_until(
        "the workers check to fail",
        lambda: next(
            c
            for c in health.readiness(deployment.settings).checks
            if c.name == "workers" and not c.ok
        ),
        timeout=60,
    )
    assert "cannot reach the store" in workers.detail
    deployment.pg.start()
    deployment.wait_ready()

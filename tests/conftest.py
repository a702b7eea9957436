"""Shared fixtures. Tests that need PostgreSQL or Redis use their own database
or db number; when the server is missing they skip locally and FAIL when
ORCH_REQUIRE_SERVICES=1 (as .ci/run sets), so CI never goes green by skipping."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.store import SqlEventStore, open_store

# pytest-xdist's workers (make test) start with COLUMNS=80 and LINES=24 set;
# the CLI runs a test starts must see what they see under plain pytest.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)

REQUIRE = os.environ.get("ORCH_REQUIRE_SERVICES") == "1"
PG_ADMIN_URL = os.environ.get("ORCH_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ORCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def redis_db_url(db: int) -> str:
    """The test Redis server's db `db`: a module that runs workers or flushes a
    db names its own as `REDIS_DB` (`tests/test_redis_dbs.py` keeps them apart:
    two modules on one db, run side by side under xdist, take or flush each
    other's tasks)."""
    return f"{REDIS_URL.rsplit('/', 1)[0]}/{db}"


def unavailable(what: str, exc: BaseException) -> None:
    msg = f"{what} is not reachable ({exc}); start it (see README, 'Tests')"
    if REQUIRE:
        pytest.fail(msg + " -- required because ORCH_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(msg)


@contextlib.contextmanager
def fresh_pg_database(prefix: str = "orch_test", migrate: bool = True) -> Iterator[str]:
    """A PostgreSQL database of its own, migrated (unless `migrate` is False),
    dropped at the end."""
    import sqlalchemy as sa

    from events.db import normalize_url

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = sa.create_engine(normalize_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001
        unavailable("PostgreSQL", exc)
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    if migrate:
        open_store(url, upgrade=True).close()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A database of this test module's own, dropped at its end: modules run in
    any order and on two processes (make test), so one module's events (an
    unknown type, a tampered row) never reach another's whole-store reads."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
        client.flushdb()
    except Exception as exc:  # noqa: BLE001
        unavailable("Redis", exc)
    return REDIS_URL


RABBITMQ_URL = os.environ.get("ORCH_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")


@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    """A RabbitMQ virtual host of this test's own (queues are named alike in
    every test), removed at the end; made with rabbitmqctl on this machine."""
    import subprocess
    import uuid

    from kombu import Connection

    vhost = f"orch-test-{uuid.uuid4().hex[:10]}"
    try:
        for args in (
            ["add_vhost", vhost],
            ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        ):
            subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)
        url = f"{RABBITMQ_URL}/{vhost}"
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001
        unavailable("RabbitMQ", exc)
    try:
        yield url
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)


@pytest.fixture(
    params=["embedded", pytest.param("production", marks=[pytest.mark.postgres, pytest.mark.redis])]
)
def deployment_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment for each deployment shape: the embedded default
    (SQLite store and broker), and PostgreSQL + Redis (the Redis db number is
    the module's REDIS_DB, so modules never share one)."""
    from tests.cli_helpers import shape_env

    if request.param == "embedded":
        return shape_env(tmp_path)
    pg_url = request.getfixturevalue("pg_url")
    request.getfixturevalue("redis_url")  # reachable, or fail (not skip) as required
    broker = redis_db_url(request.module.REDIS_DB)
    return shape_env(tmp_path, store_url=pg_url, broker_url=broker, ORCH_WORKER_CONCURRENCY="2")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def own_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlEventStore]:
    """A store in a database of this test's own (tampering and flushing tests
    must not leak into others): SQLite, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        s = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
        yield s
        s.close()
        return
    with fresh_pg_database("orch_test_own") as url:
        s = SqlEventStore(url)
        yield s
        s.close()


def sqlite_store(tmp_path: Path) -> SqlEventStore:
    return open_store(str(tmp_path / "events.sqlite"), upgrade=True)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlEventStore]:
    """The same contract suite runs on every backend."""
    if request.param == "sqlite":
        s = sqlite_store(tmp_path)
    else:
        s = SqlEventStore(request.getfixturevalue("pg_url"))
    yield s
    s.close()


@pytest.fixture
def stream_id() -> str:
    return f"s-{uuid.uuid4().hex}"

"""Readiness verdicts (pure) and heartbeats on the embedded default and on Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config.settings import Settings
from orchestrator.ops import health, heartbeat
from tests.conftest import redis_db_url

REDIS_DB = 14


def beat(host: str, at: float, store_ok: bool = True, detail: str = "") -> heartbeat.Beat:
    return heartbeat.Beat(
        hostname=host, pid=1, at=at, store_ok=store_ok, detail=detail, queues=("orchestrator",)
    )


def test_a_fresh_worker_that_reaches_its_store_makes_the_workers_check_pass() -> None:
    s = Settings(state_dir=Path("/nonexistent"), worker_heartbeat_max_age_s=30)
    check = health.workers_check(s, [beat("w1@a", 100.0), beat("w2@b", 10.0)], now=110.0)
    assert check.ok and "w1@a" in check.detail and "w2@b" not in check.detail


def test_stale_or_storeless_workers_fail_with_a_remedy() -> None:
    s = Settings(state_dir=Path("/nonexistent"), worker_heartbeat_max_age_s=30)
    stale = health.workers_check(s, [beat("w1@a", 10.0)], now=110.0)
    assert not stale.ok and "1 stale heartbeat" in stale.detail and "start workers" in stale.remedy
    blind = health.workers_check(s, [beat("w1@a", 100.0, False, "connection refused")], now=110.0)
    assert (
        not blind.ok and "connection refused" in blind.detail and "ORCH_STORE_URL" in blind.remedy
    )
    unread = health.workers_check(s, None, now=110.0, problem="Connection refused")
    assert not unread.ok and unread.name == "workers" and "broker" in unread.remedy


def test_embedded_heartbeat_files_round_trip_and_withdraw(tmp_path: Path) -> None:
    s = Settings(state_dir=tmp_path)
    heartbeat.publish(s, beat("celery@host/1", 5.0))
    assert heartbeat.read_all(s) == [beat("celery@host/1", 5.0)]
    (heartbeat.folder(s) / "junk.json").write_text("{not json")
    assert len(heartbeat.read_all(s)) == 1
    heartbeat.withdraw(s, "celery@host/1")
    assert heartbeat.read_all(s) == []


def test_readiness_on_an_embedded_state_folder_without_workers_names_the_workers(
    tmp_path: Path,
) -> None:
    report = health.readiness(Settings(state_dir=tmp_path))
    assert not report.ok
    assert report.to_json()["failed"] == ["workers"]
    heartbeat.publish(Settings(state_dir=tmp_path), beat("w@h", 1000.0))
    assert health.readiness(Settings(state_dir=tmp_path), now=1001.0).ok


@pytest.mark.redis
def test_heartbeats_on_redis_are_seen_from_any_machine_and_expire(
    redis_url: str, tmp_path: Path
) -> None:
    import redis

    url = redis_db_url(REDIS_DB)
    redis.Redis.from_url(url).flushdb()
    s = Settings(state_dir=tmp_path / "a", broker_url=url, worker_heartbeat_max_age_s=30)
    heartbeat.publish(s, beat("w@a", 1.0))
    other = Settings(state_dir=tmp_path / "b", broker_url=url)  # another machine
    assert [b.hostname for b in heartbeat.read_all(other)] == ["w@a"]
    ttl = redis.Redis.from_url(url).pttl(heartbeat.REDIS_PREFIX + "w@a")
    assert 0 < ttl <= 30_000
    heartbeat.withdraw(s, "w@a")
    assert heartbeat.read_all(other) == []


def test_an_unreachable_redis_broker_fails_broker_and_workers_checks(tmp_path: Path) -> None:
    s = Settings(state_dir=tmp_path, broker_url="redis://127.0.0.1:1/0")
    report = health.readiness(s)
    assert not report.ok
    assert {"broker", "workers"} <= set(report.to_json()["failed"])


def test_a_worker_that_lost_its_broker_is_not_ready() -> None:
    s = Settings(state_dir=Path("/nonexistent"))
    lost = heartbeat.Beat(
        hostname="w@a", pid=1, at=100.0, store_ok=True, broker_ok=False, detail="no answer to PING"
    )
    check = health.workers_check(s, [lost], now=101.0)
    assert not check.ok and "cannot reach the broker" in check.detail
    assert "ORCH_BROKER_URL" in check.remedy
    old_file = {"hostname": "w@a", "pid": 1, "at": 1.0, "store_ok": True}  # before broker_ok
    assert heartbeat.Beat.from_json(old_file).broker_ok

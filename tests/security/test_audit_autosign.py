"""Digests are signed without anyone running `audit sign`: when sessions end
(the last link of each chain), periodically, and when a worker stops. With a
real key, real workers and real SQLite and PostgreSQL stores: after a job,
`audit verify --require-proof` passes with no UNPROVEN stream, a rewrite
after signing is caught, and without a key nothing is signed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from events import digests
from events import payloads as p
from events.digests import DIGEST_STREAM
from events.envelope import NewEvent
from events.store import SqlEventStore, open_store
from events.verify import verify_rows
from orchestrator.audit import digests as audit
from orchestrator.ops import workers
from orchestrator.run.sample_repos import create_sample_repos
from tests.cli_helpers import ROOT, cli, cli_json, shape_env
from tests.conftest import fresh_pg_database, redis_db_url
from tests.processes import dies_with_us
from tests.security.test_audit_digests import _recompute, _tamper

# A Redis db no other test or bench uses (11 conftest, 12 e2e, 13 agent jobs and
# bench, 14 bench results): these tests flush it and run workers on it.
REDIS_DB = 15

KEY = digests.load_private(digests.generate_key()[0])
TRUSTED = [KEY.public_key()]

JOB = """
name: autosign
targets: ["sample-repos/*"]
steps:
  - kind: replace
    pattern: '\\bfetch_user\\b'
    replacement: load_user
    glob: ['**/*.py']
  - kind: search
    pattern: '\\bfetch_user\\b'
    expect: 0
"""


def turns(n: int) -> list[NewEvent]:
    return [
        NewEvent.create(
            p.TurnStarted(turn=i, name=f"step {i}", kind="shell"),
            actor="user:test",
            correlation_id="job-1",
        )
        for i in range(1, n + 1)
    ]


def _digests(store: SqlEventStore) -> list[p.AuditDigest]:
    return [e.payload for e in store.read_stream(DIGEST_STREAM)]


# -- signing what changed, on real stores ------------------------------------------------


def test_only_changed_heads_are_signed_and_an_idle_store_gets_no_digest(own_store):
    a, b = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    own_store.append(a, turns(2), 0)
    own_store.append(b, turns(1), 0)
    first = audit.sign_changed(own_store, KEY, "worker:test")
    assert first is not None and {h.stream_id for h in first.payload.heads} == {a, b}
    assert audit.sign_changed(own_store, KEY, "worker:test") is None  # nothing new
    own_store.append(a, turns(1), 2)
    second = audit.sign_changed(own_store, KEY, "worker:test")
    assert [(h.stream_id, h.seq) for h in second.payload.heads] == [(a, 3)]
    assert audit.sign_changed(own_store, KEY, "worker:test") is None
    report = audit.prove_store(own_store, TRUSTED)
    assert report.ok and report.unproven == {} and report.digests == 2


def test_concurrent_signers_keep_the_digest_stream_one_valid_chain(own_store):
    n = 8
    streams = [f"s{i}-{uuid.uuid4().hex}" for i in range(n)]
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def worker(sid: str) -> None:
        try:
            own_store.append(sid, turns(3), 0)
            barrier.wait()
            audit.sign_changed(own_store, KEY, f"worker:{sid}", [sid])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert verify_rows(own_store.rows(DIGEST_STREAM)).ok
    seqs = [e.seq for e in own_store.read_stream(DIGEST_STREAM)]
    assert seqs == list(range(1, len(seqs) + 1)) and 1 <= len(seqs) <= n
    report = audit.prove_store(own_store, TRUSTED)
    assert report.ok and report.unproven == {}
    assert set(streams) <= set(report.proven)


# -- real jobs through real workers ---------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public, _ = audit.keygen(tmp_path / "keys")
    return private, public


def _job(tmp_path: Path) -> Path:
    create_sample_repos(tmp_path / "sample-repos", count=2)
    spec = tmp_path / "job.yaml"
    spec.write_text(JOB)
    return spec


def _verify(env: dict[str, str], public: Path) -> tuple[int, dict]:
    result = cli(env, "audit", "verify", "--require-proof", "--public-key", str(public), "--json")
    return result.returncode, json.loads(result.stdout)


def _store_of(env: dict[str, str]) -> SqlEventStore:
    return SqlEventStore(
        env.get("ORCH_STORE_URL") or f"sqlite:///{Path(env['ORCH_STATE_DIR']) / 'events.sqlite'}"
    )


@pytest.fixture(
    params=["embedded", pytest.param("production", marks=[pytest.mark.postgres, pytest.mark.redis])]
)
def shape(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Embedded (SQLite store and broker) or production (PostgreSQL and Redis),
    each on a store of the test's own (the test rewrites history in it)."""
    if request.param == "embedded":
        yield shape_env(tmp_path)
        return
    import redis

    request.getfixturevalue("redis_url")  # reachable, or fail (not skip) as required
    redis_url = redis_db_url(REDIS_DB)
    redis.Redis.from_url(redis_url).flushdb()  # nothing left from an earlier run
    with fresh_pg_database("orch_test_autosign") as url:
        yield shape_env(tmp_path, store_url=url, broker_url=redis_url)


@pytest.mark.slow
def test_a_job_run_with_a_key_is_proven_and_a_later_rewrite_is_caught(shape, keys, tmp_path):
    private, public = keys
    env = {**shape, "ORCH_AUDIT_KEY_FILE": str(private)}
    ran = cli(env, "run", str(_job(tmp_path)), "--base-dir", str(tmp_path), "--json")
    assert ran.returncode == 0, ran.stderr
    job = json.loads(ran.stdout)
    code, verified = _verify(shape, public)  # the auditor has no private key
    assert code == 0, verified
    assert verified["ok"] and verified["proof"]["unproven"] == []
    store = _store_of(shape)
    signed = {h.stream_id for d in _digests(store) for h in d.heads}
    assert {job["job_id"], *(s["session_id"] for s in job["sessions"])} <= signed

    victim = job["sessions"][0]["session_id"]
    turn = next(e.seq for e in store.read_stream(victim) if e.type == "TurnStarted")
    _tamper(store, *_recompute(store, victim, edit_seq=turn))
    store.close()
    code, verified = _verify(shape, public)
    assert code == 1
    assert verified["ok"]  # the chains alone are fooled
    # Every digest that saw the victim after the edited event catches it (one
    # or more, as chains ended while it ran); nothing else is reported.
    assert {(x["kind"], x["stream_id"]) for x in verified["proof"]["problems"]} == {
        ("digest_mismatch", victim)
    }


@pytest.mark.slow
def test_without_a_key_nothing_is_signed_and_every_stream_stays_unproven(tmp_path):
    env = shape_env(tmp_path)
    ran = cli(env, "run", str(_job(tmp_path)), "--base-dir", str(tmp_path), "--json")
    assert ran.returncode == 0, ran.stderr
    job = json.loads(ran.stdout)
    verified = cli(env, "audit", "verify", "--require-proof", "--json")
    assert verified.returncode == 1
    unproven = {u["stream_id"] for u in json.loads(verified.stdout)["proof"]["unproven"]}
    assert unproven == {job["job_id"], *(s["session_id"] for s in job["sessions"])}
    store = _store_of(env)
    assert _digests(store) == []
    store.close()


def _foreground_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "worker"],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(Path(env["ORCH_STATE_DIR"]) / "fg-worker.log", "ab"),
        start_new_session=True,
        preexec_fn=dies_with_us(),
    )


def _until_proven(env: dict[str, str], public: Path, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        code, verified = _verify(env, public)
        if code == 0 or time.monotonic() > deadline:
            return verified
        time.sleep(0.3)


@pytest.mark.slow
def test_each_chain_signs_its_sessions_when_they_end_while_the_worker_runs(keys, tmp_path):
    private, public = keys
    env = shape_env(tmp_path, ORCH_AUDIT_KEY_FILE=str(private), ORCH_AUDIT_SIGN_INTERVAL_S="0")
    (tmp_path / "state").mkdir()
    submitted = cli_json(env, "submit", str(_job(tmp_path)), "--base-dir", str(tmp_path))
    worker = _foreground_worker(env)
    try:
        verified = _until_proven(env, public)  # no periodic digest, no stop yet
        assert verified["proof"]["unproven"] == [], verified
        store = _store_of(env)
        by_digest = [{h.stream_id for h in d.heads} for d in _digests(store)]
        store.close()
        for s in submitted["sessions"]:
            assert any({s["session_id"], submitted["job_id"]} <= heads for heads in by_digest)
    finally:
        workers.stop_worker(worker)


@pytest.mark.slow
def test_the_embedded_worker_signs_periodically_what_no_session_end_covers(keys, tmp_path):
    private, public = keys
    env = shape_env(tmp_path, ORCH_AUDIT_KEY_FILE=str(private), ORCH_AUDIT_SIGN_INTERVAL_S="0.5")
    store = open_store(str(tmp_path / "state" / "events.sqlite"), upgrade=True)
    worker = _foreground_worker(env)
    try:
        store.append("adhoc-1", turns(3), 0)  # no chain ends for this stream
        assert _until_proven(env, public)["proof"]["unproven"] == []
        count = len(_digests(store))
        time.sleep(1.5)  # idle: three intervals, no digest
        assert len(_digests(store)) == count
        store.append("adhoc-1", turns(1), 3)
        assert _until_proven(env, public)["proof"]["unproven"] == []
    finally:
        workers.stop_worker(worker)
        store.close()


@pytest.mark.slow
def test_a_key_the_worker_cannot_load_signs_nothing_and_fails_no_step(tmp_path):
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("this is not a PEM\n")
    env = shape_env(tmp_path)
    ran = cli(
        {**env, "ORCH_AUDIT_KEY_FILE": str(bad)},
        "run",
        str(_job(tmp_path)),
        "--base-dir",
        str(tmp_path),
        "--json",
    )
    assert ran.returncode == 0, ran.stderr
    assert {s["status"] for s in json.loads(ran.stdout)["sessions"]} == {"completed"}
    store = _store_of(env)
    assert _digests(store) == []
    store.close()
    log = (tmp_path / "state" / "worker.log").read_text()
    assert "not signing digests" in log and "ORCH_AUDIT_KEY_FILE" in log


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_celery_beat_schedules_the_periodic_digest_on_a_server_broker(keys, redis_url, tmp_path):
    import redis

    private, public = keys
    broker = redis_db_url(REDIS_DB)
    redis.Redis.from_url(broker).flushdb()
    with fresh_pg_database("orch_test_autosign") as url:
        env = shape_env(
            tmp_path,
            store_url=url,
            broker_url=broker,
            ORCH_AUDIT_KEY_FILE=str(private),
            ORCH_AUDIT_SIGN_INTERVAL_S="0.5",
        )
        (tmp_path / "state").mkdir()
        worker = _foreground_worker(env)
        beat = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tasks.app",
                "beat",
                "--schedule",
                str(tmp_path / "state" / "beat-schedule"),
            ],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "state" / "beat.log", "ab"),
            start_new_session=True,
            preexec_fn=dies_with_us(),
        )
        try:
            store = SqlEventStore(url)
            store.append("adhoc-1", turns(2), 0)
            assert _until_proven(env, public)["proof"]["unproven"] == []
            store.close()
        finally:
            workers.stop_worker(beat)
            workers.stop_worker(worker)

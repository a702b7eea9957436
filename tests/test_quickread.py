"""`events.quickread`, what `orchestrator status` reads without SQLAlchemy:
the rows of one job exactly as the store gives them, sealed fields opened
as the store's filter opens them (forgotten ones too), the same view once
folded; and None, so that status opens the store instead, whenever it
cannot be sure. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from events import payloads as p
from events import quickread
from events.keyring import SqlKeyRing
from events.sealing import Sealer
from events.store import SqlEventStore, open_store
from events.urls import normalize_url, sqlite_path
from orchestrator.agent.loop import AgentLoop
from orchestrator.agent.providers.scripted import ScriptedProvider
from orchestrator.audit import kek as kek_mod
from orchestrator.audit.protect import event_filters
from orchestrator.config.settings import Settings
from orchestrator.run import jobs
from orchestrator.run.jobspec import parse_spec
from orchestrator.run.runner import Runner
from orchestrator.run.watch import final_view, session_summary, view_of
from tests.cli_helpers import cli_json, shape_env
from tests.factories import new

SECRET_DIFF = "+PLAINTEXT-DIFF-77c1\n"


@pytest.fixture
def sealed(own_store: SqlEventStore, tmp_path: Path) -> Iterator[tuple[SqlEventStore, Sealer]]:
    kek_mod.generate(tmp_path / "kek")
    sealer = Sealer(SqlKeyRing(own_store.url, kek_mod.load(tmp_path / "kek")))
    store = SqlEventStore(own_store.url, filters=[sealer])
    yield store, sealer
    store.close()
    sealer.keys.close()  # type: ignore[attr-defined]


def _job(store: SqlEventStore, sessions: int = 2) -> tuple[str, list[str]]:
    """A job whose first session finished with a sealed diff; the others
    started and stopped midway (a running job)."""
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    sids = [f"s-{uuid.uuid4().hex[:8]}" for _ in range(sessions)]
    refs = tuple(p.SessionRef(session_id=s, target=f"repo{i}") for i, s in enumerate(sids))
    submitted = p.JobSubmitted(name="j", spec={"steps": [{"kind": "write"}]}, sessions=refs)
    store.append(job_id, [new(submitted, corr=job_id)], 0)
    for n, sid in enumerate(sids):
        events: list[object] = [
            p.SessionStarted(job_id=job_id, target=f"repo{n}", steps=("w",)),
            p.TurnStarted(turn=1, name="w", kind="write"),
        ]
        if n == 0:
            events += [
                p.ToolCallRequested(call_id="c1", turn=1, tool="write", args={"path": "a"}),
                p.PermissionDecided(call_id="c1", decision="allow", rule_id="r", policy_hash="h"),
                p.ToolCallStarted(call_id="c1"),
                p.FileChanged(
                    call_id="c1", path="a", before_hash=None, after_hash="ab", diff=SECRET_DIFF
                ),
                p.ToolCallCompleted(call_id="c1", tool="write", output="ok", output_bytes=2),
                p.TurnCompleted(turn=1, status="ok"),
                p.SessionCompleted(files_changed=1),
            ]
        store.append(sid, [new(e, i, corr=job_id) for i, e in enumerate(events)], 0)
    done = p.SessionFinished(session_id=sids[0], status="completed")
    store.append(job_id, [new(done, 1, corr=job_id)], 1)
    return job_id, sids


def _reveal(read: quickread.JobRows, sealer: Sealer) -> object:
    keys = quickread.StoredKeys(read.keys, sealer.keys.kek)  # type: ignore[attr-defined]
    return read.loads(Sealer(keys).reveal)


def test_a_jobs_rows_and_view_are_the_stores(sealed) -> None:
    store, sealer = sealed
    job_id, sids = _job(store)
    _job(store)  # another job's rows are not read
    read = quickread.job_rows(store.url, job_id)
    assert read is not None
    assert read.rows == list(store.raw_all(correlation_id=job_id))
    assert any(quickread.MARK in body for _, body, _ in read.rows)
    loads = _reveal(read, sealer)
    assert [loads(b) for _, b, _ in read.rows] == [store.loads(b) for _, b, _ in read.rows]  # type: ignore[operator]
    view, last = view_of(job_id, read.rows, loads)  # type: ignore[arg-type]
    expected = final_view(store, job_id)
    assert (view.job, view.sessions) == (expected.job, expected.sessions)
    assert view.sessions[sids[0]].files_changed[0].path == "a"
    newest = max(e.occurred_at for e in store.read_correlation(job_id))
    assert last == newest


def test_forgotten_fields_read_as_the_store_reads_them(sealed) -> None:
    store, sealer = sealed
    job_id, sids = _job(store, sessions=1)
    sealer.keys.forget(sids[0], "ops", "erasure request")  # type: ignore[attr-defined]
    sealer.forget_cached(list(sealer._opened))
    read = quickread.job_rows(store.url, job_id)
    assert read is not None
    loads = _reveal(read, sealer)
    opened = [loads(b) for _, b, _ in read.rows]  # type: ignore[operator]
    assert opened == [store.loads(b) for _, b, _ in read.rows]
    assert "forgotten on" in str(opened) and SECRET_DIFF not in str(opened)


def test_without_a_reveal_sealed_fields_stay_as_stored(sealed) -> None:
    store, _ = sealed
    job_id, _ = _job(store, sessions=1)
    read = quickread.job_rows(store.url, job_id)
    assert read is not None
    plain = SqlEventStore(store.url)  # a store with no sealing filter
    try:
        loads = read.loads(None)
        assert [loads(b) for _, b, _ in read.rows] == [plain.loads(b) for _, b, _ in read.rows]
    finally:
        plain.close()


def test_an_unknown_job_reads_no_rows(own_store: SqlEventStore) -> None:
    read = quickread.job_rows(own_store.url, "no-such-job")
    assert read is not None and read.rows == []


def test_a_missing_database_is_left_to_the_store_and_not_made(tmp_path: Path) -> None:
    db = tmp_path / "none" / "events.sqlite"
    assert quickread.job_rows(str(db), "j") is None
    assert not db.exists() and not db.parent.exists()


def test_a_schema_off_head_is_left_to_the_store(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite"
    open_store(str(db), upgrade=True).close()
    assert quickread.job_rows(str(db), "j") is not None
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0002'")
    assert quickread.job_rows(str(db), "j") is None
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()  # a file with no tables at all
    assert quickread.job_rows(str(empty), "j") is None


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u@h/db",
        "sqlite://",
        "sqlite:///:memory:",
        "postgresql://postgres@127.0.0.1:1/nothing",  # nothing listens: the store says so
    ],
)
def test_what_it_cannot_read_is_left_to_the_store(url: str, tmp_path: Path) -> None:
    assert quickread.job_rows(url, "j") is None


def test_sqlite_paths_are_sqlalchemys() -> None:
    for url in (
        "sqlite:////tmp/a%20b/events.sqlite",
        "sqlite:///relative/events.sqlite",
        "sqlite+pysqlite:////tmp/x.sqlite?timeout=5",
        normalize_url("~/state/events.sqlite"),
    ):
        assert sqlite_path(url) == Path(make_url(url).database or "")
    assert sqlite_path("postgresql+psycopg://u@h/db") is None


AGENT_JOB = """
name: agent
targets: [repo]
steps: []
agent: {instruction: look around, turns: [{content: done}]}
"""
WAITING_JOB = """
name: tidy
targets: [repo]
steps: [{kind: delete, path: a.py}]
"""


def test_status_shows_what_the_stores_view_shows(tmp_path: Path) -> None:
    """`orchestrator status --json` (this reader) against the store's own
    view of the same jobs: an agent job whose model reply is sealed, and a
    job waiting for a confirmation."""
    env = shape_env(tmp_path)
    get = Settings.model_validate({"state_dir": tmp_path / "state"})
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "a.py").write_text("x = 1\n")
    store = open_store(get.effective_store_url, upgrade=True, filters=event_filters(get))
    try:
        ids = []
        for text in (AGENT_JOB, WAITING_JOB):
            spec = parse_spec(text)
            job_id, [t] = jobs.prepare(spec, tmp_path)
            jobs.record(store, spec, job_id, [t], "user:test")
            runner = Runner(store, "worker:test")
            if spec.agent is not None:
                provider = ScriptedProvider([{"content": "all done, PLAINTEXT-REPLY-5e1a"}])
                AgentLoop(runner, lambda _, p=provider: p).advance(t)
            else:
                runner.run_step(t, 0, spec.steps[0], last=True)
            ids.append(job_id)
        raw = b"".join(body for _, body, _ in store.raw_all())
        assert b"PLAINTEXT-REPLY" not in raw  # sealed where it is stored
        for job_id in ids:
            got = cli_json(env, "status", job_id)
            view = final_view(store, job_id)
            rows = [{k: v for k, v in r.items() if k != "patch"} for r in session_summary(view)]
            assert (got["name"], got["status"]) == (view.job.name, view.job.outcome)
            assert got["sessions"] == json.loads(json.dumps(rows))
        agent = cli_json(env, "status", ids[0])["sessions"][0]["agent"]
        assert agent["message"] == "all done, PLAINTEXT-REPLY-5e1a"
        assert cli_json(env, "status", ids[1])["sessions"][0]["status"] == "waiting"
    finally:
        store.close()

"""`orchestrator pending` reads confirmations through the (type, position)
index instead of the whole log; the schema mirror stays what the migrations
build; a store made before the index upgrades in place. Real SQLite and
PostgreSQL databases of each test's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from events import migrate
from events import payloads as p
from events.envelope import NewEvent, new_id
from events.errors import SchemaNotReady
from events.schema import metadata
from events.store import SqlEventStore, open_store
from orchestrator.run import confirmations
from orchestrator.run.runner import Runner, Ticket
from orchestrator.run.steps import ShellStep
from tests.conftest import fresh_pg_database
from tests.factories import new


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def own_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty, unmigrated database of this test's own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.sqlite'}"
        return
    with fresh_pg_database("orch_test_pending", migrate=False) as url:
        yield url


def _own_store(url: str) -> SqlEventStore:
    return open_store(url, upgrade=True)


def test_the_schema_mirror_is_what_the_migrations_build(own_url):
    store = _own_store(own_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    store.close()
    assert diff == [], "events/schema.py and events/migrations differ; change them together"


def test_read_types_returns_only_those_types_in_position_order(own_url):
    store = _own_store(own_url)
    store.append(
        "s-a",
        [new(p.TurnStarted(turn=i, name="x", kind="shell")) for i in range(3)]
        + [new(p.ConfirmationGranted(call_id="c1", by="user:ops"))],
        0,
    )
    store.append(
        "s-b",
        [
            new(p.ConfirmationDenied(call_id="c2", by="user:ops")),
            new(p.SessionCompleted(files_changed=0)),
            new(p.ConfirmationGranted(call_id="c3", by="user:ops")),
        ],
        0,
    )
    got = list(store.read_types(("ConfirmationGranted", "ConfirmationDenied")))
    assert [(e.stream_id, e.payload.call_id) for e in got] == [
        ("s-a", "c1"),
        ("s-b", "c2"),
        ("s-b", "c3"),
    ]
    assert [e.position for e in got] == sorted(e.position for e in got)
    after = list(store.read_types(("ConfirmationGranted",), after_position=got[0].position))
    assert [e.payload.call_id for e in after] == ["c3"]
    assert list(store.read_types(())) == []
    store.close()


def _asking_session(store: SqlEventStore, work: Path) -> Ticket:
    rm = ShellStep(command=["sh", "-c", "rm -f junk.txt"])
    t = Ticket(
        job_id=new_id(),
        session_id=new_id(),
        target="repo",
        path=str(work),
        steps=(rm.label,),
        sessions_total=1,
    )
    assert Runner(store, "worker:test").run_step(t, 0, rm, last=True) == "waiting"
    return t


def test_pending_lists_exactly_the_unanswered_confirmations_among_other_events(own_url, tmp_path):
    store = _own_store(own_url)
    work = tmp_path / "repo"
    work.mkdir()
    (work / "junk.txt").write_text("junk")
    store.append(
        "noise", [new(p.TurnStarted(turn=i, name="x", kind="shell")) for i in range(2500)], 0
    )  # more than a page of reads
    first, answered, last = (_asking_session(store, work) for _ in range(3))
    [asked] = [w for w in confirmations.pending(store) if w.session_id == answered.session_id]
    store.append(
        answered.session_id,
        [
            NewEvent.create(
                p.ConfirmationDenied(call_id=asked.call_id, by="user:ops"),
                actor="user:ops",
                correlation_id=answered.job_id,
                idempotency_key=f"confirm:{asked.call_id}",
            )
        ],
        None,
    )
    waiting = confirmations.pending(store)
    assert [w.session_id for w in waiting] == [first.session_id, last.session_id]
    assert {(w.rule_id, w.turn, w.tool) for w in waiting} == {("destructive-rm", 1, "shell")}
    assert waiting[0].args["command"] == ["sh", "-c", "rm -f junk.txt"]
    assert (work / "junk.txt").exists()
    store.close()


def test_a_store_made_before_the_index_upgrades_and_keeps_its_confirmations(own_url, tmp_path):
    old = SqlEventStore(own_url, check_schema=False)
    with old.engine.begin() as conn:
        cfg = migrate._config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    work = tmp_path / "repo"
    work.mkdir()
    t = _asking_session(old, work)
    old.close()
    with pytest.raises(SchemaNotReady, match="db upgrade"):
        SqlEventStore(own_url)
    store = open_store(own_url, upgrade=True)
    assert migrate.current_revision(store.engine) == migrate.head_revision() == migrate.HEAD
    assert [w.session_id for w in confirmations.pending(store)] == [t.session_id]
    store.close()

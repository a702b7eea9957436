"""Group commit: `append_many` stores several streams' batches in one
transaction, and a chunk's step (`orchestrator.run.chunk`) stores the same
events, under the same keys, as its sessions run one by one would."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from events import payloads as p
from events.envelope import NewEvent
from events.errors import SequenceConflict
from events.replay import replay
from events.store import SqlEventStore
from events.verify import verify_rows
from orchestrator.run import jobs
from orchestrator.run.chunk import run_chunk
from orchestrator.run.jobspec import JobSpec
from orchestrator.run.runner import Runner, Ticket
from tests.conftest import sqlite_store


def _batch(key: str, *payloads: object) -> list[NewEvent]:
    return [
        NewEvent.create(pl, actor="t", correlation_id="job", idempotency_key=key) for pl in payloads
    ]


def _finished(sid: str) -> p.SessionFinished:
    return p.SessionFinished(session_id=sid, status="completed")


def test_append_many_checks_each_stream_and_is_all_or_nothing(store: SqlEventStore):
    items = [
        ("job", _batch("finished:a", _finished("a")), None),
        ("job", _batch("finished:b", _finished("b")), None),
        ("other", _batch("k", _finished("c"), _finished("d")), 0),
    ]
    stored = store.append_many(items)
    assert [[e.seq for e in s] for s in stored] == [[1], [2], [1, 2]]
    assert [e.event_id for e in store.read_stream("job")] == [s[0].event_id for s in stored[:2]]
    assert verify_rows(store.rows()).ok
    # The same batches again (a redelivery): every key is a hit, nothing is added.
    assert store.append_many(items) == stored
    # One stale item: none of the group is stored.
    with pytest.raises(SequenceConflict):
        store.append_many(
            [
                ("job", _batch("finished:e", _finished("e")), None),
                ("other", _batch("k2", _finished("f")), 1),
            ]
        )
    assert store.last_seq("job") == 2 and store.last_seq("other") == 2


def test_append_many_sees_what_its_earlier_items_placed(store: SqlEventStore):
    """An item's head and keys are those the items before it in the group left:
    a key repeated within one group is a hit on the first, and an empty batch
    stores nothing (on PostgreSQL all items are read and inserted at once)."""
    store.append("s", _batch("first", _finished("x")), 0)
    items = [
        ("s", _batch("a", _finished("a")), 1),
        ("t", [], None),
        ("s", _batch("b", _finished("b"), _finished("c")), 2),
        ("s", _batch("a", _finished("a2")), None),
        ("u", _batch("a", _finished("d")), 0),
    ]
    stored = store.append_many(items)
    assert [[e.seq for e in s] for s in stored] == [[2], [], [3, 4], [2], [1]]
    assert stored[3] == stored[0]
    assert [e.seq for e in store.read_stream("s")] == [1, 2, 3, 4]
    assert [e.position for e in store.read_stream("s")][1:] == [
        e.position for e in stored[0] + stored[2]
    ]
    assert verify_rows(store.rows()).ok
    # The next group starts from the heads this one left.
    more = store.append_many([("s", _batch("e", _finished("e")), 4), ("u", _batch("f"), 1)])
    assert [[e.seq for e in s] for s in more] == [[5], []]
    assert verify_rows(store.rows()).ok


SPEC = {
    "name": "group",
    "targets": ["repos/*"],
    "steps": [
        {"kind": "replace", "name": "rename", "pattern": r"\bold\(", "replacement": "new("},
    ],
}


def _job(tmp: Path, store: SqlEventStore, n: int) -> list[Ticket]:
    for i in range(n):
        repo = tmp / "repos" / f"r{i:02d}"
        (repo / "pkg").mkdir(parents=True, exist_ok=True)
        (repo / "a.py").write_text("old(1)\nx = 2\n" if i % 3 else "nothing here\n")
        (repo / "pkg" / "b.py").write_text("y = old(2) + old(3)\n")
    spec = JobSpec.model_validate(SPEC)
    job_id, tickets = jobs.prepare(spec, tmp)
    jobs.record(store, spec, job_id, tickets, "user:test")
    return tickets


def _shape(store: SqlEventStore, stream: str) -> list[tuple[str, str | None]]:
    return [(e.type, e.idempotency_key) for e in store.read_stream(stream)]


def test_a_chunk_stores_what_its_sessions_one_by_one_store(tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    s1, s2 = sqlite_store(one), sqlite_store(two)
    t1, t2 = _job(one, s1, 7), _job(two, s2, 7)
    step = JobSpec.model_validate(SPEC).steps[0]
    alone = Runner(s1, "worker:a")
    for t in t1:
        assert alone.run_step(t, 0, step, last=True) == "completed"
    together = Runner(s2, "worker:b")
    got = run_chunk(together, t2, 0, step, last=True, task_id="task-1")
    assert got == {t.session_id: "completed" for t in t2}
    for a, b in zip(t1, t2):
        assert _shape(s1, a.session_id) == _shape(s2, b.session_id)
        live = together.load(b.session_id)
        assert replay(s2, b.session_id, use_snapshot=False) == live
    assert [e.type for e in s2.read_stream(t2[0].job_id)][-1] == "JobCompleted"
    assert sorted(e.type for e in s1.read_stream(t1[0].job_id)) == sorted(
        e.type for e in s2.read_stream(t2[0].job_id)
    )
    assert verify_rows(s2.rows()).ok
    for i in range(7):
        assert (two / "repos" / f"r{i:02d}" / "pkg" / "b.py").read_text() == (
            "y = new(2) + new(3)\n"
        )
    # A redelivery of the whole chunk: every session is past the step, so
    # each runs alone (handed back) and appends nothing.
    before = list(s2.read_all())
    again = run_chunk(Runner(s2, "worker:c"), t2, 0, step, last=True, task_id="task-1")
    assert set(again.values()) == {None}
    for t in t2:
        assert Runner(s2, "worker:c").run_step(t, 0, step, last=True) == "completed"
    assert list(s2.read_all()) == before


def test_a_session_whose_plan_was_stored_before_a_crash_is_resumed_alone(tmp_path: Path):
    store = sqlite_store(tmp_path)
    tickets = _job(tmp_path, store, 4)
    step = JobSpec.model_validate(SPEC).steps[0]
    crashed = Runner(store, "worker:dead")
    first = tickets[1]
    # The dead worker stored the start and the plan of one session, then died
    # before touching its files.
    state = crashed.load(first.session_id)
    state = crashed.absorb(first.session_id, state, crashed._start(first, state, None))
    from orchestrator.run.calls import Call

    call = Call(first, 1, step, crashed.tools[step.kind], Path(first.path or ""), True, None)
    crashed._phase1(call, state)
    runner = Runner(store, "worker:b")
    got = run_chunk(runner, tickets, 0, step, last=True)
    assert got[first.session_id] is None  # handed back: it resumes alone
    assert {got[t.session_id] for t in tickets if t is not first} == {"completed"}
    assert runner.run_step(first, 0, step, last=True) == "completed"
    types = [e.type for e in store.read_stream(first.session_id)]
    assert types.count("ToolCallRedelivered") == 1 and types[-1] == "SessionCompleted"
    assert [e.type for e in store.read_stream(tickets[0].job_id)][-1] == "JobCompleted"
    text = (Path(first.path or "") / "pkg" / "b.py").read_text()
    assert text == "y = new(2) + new(3)\n"
    shutil.rmtree(tmp_path / "repos")

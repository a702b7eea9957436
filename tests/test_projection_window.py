"""The live part of a session's projections (events.projections.window): the
same folds, bounded whatever the history. Pure: no store, no clock, no mocks
(the snapshot tests at the end use a SQLite store in a temporary folder).

A live state must not depend on where snapshots were taken (replay == live),
must keep everything still in play, and must agree with the full state on
everything it keeps."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import payloads as p
from events.envelope import Event
from events.history import history, replay_json
from events.projections import Projections, apply, fold, fold_records
from events.projections.window import AGENT_KEEP, KEEP
from events.replay import SNAPSHOT_VERSION, load, replay
from events.store import open_store
from tests.factories import new, session_payloads
from tests.projection_streams import (
    _agent_started,
    _changed,
    _model_turn,
    _step,
    random_session,
)
from tests.test_projections import stored

LIVE = Projections.live()


def long_session(rng: random.Random, turns: int) -> list[object]:
    """A session far longer than the window: steps that succeed, fail, stop
    half-way or wait (and go on regardless), model turns, and a new path
    changed every few turns besides the few changed again and again."""
    out: list[object] = [p.SessionStarted(job_id="j", target="/w", steps=("s1", "s2", "s3"))]
    agent = rng.random() < 0.6
    if agent:
        out.append(_agent_started("chat"))
    for turn in range(1, turns + 1):
        if agent:
            out += _model_turn(rng, turn)
        tool = rng.choice(["search", "replace", "write", "patch", "shell"])
        events, _ = _step(rng, turn, tool)
        if turn % 3 == 0 and isinstance(events[-2], p.ToolCallCompleted):
            events.insert(-2, _changed(f"c{turn}", f"new/{turn}.py", "h0", "h1"))
        out += events
    if rng.random() < 0.5:
        out.append(p.SessionCompleted(files_changed=0))
    return out


def live_ways(events: list[Event], records: list[dict[str, object]], cut: int) -> list[Projections]:
    """The live part folded each way the product folds it: from the stored JSON,
    event by event, and from a snapshot (through its JSON) of a prefix."""
    step_by_step = LIVE
    for e in events:
        step_by_step = apply(step_by_step, e)
    head = fold_records(records[:cut], LIVE)
    snapshot = Projections.model_validate_json(head.model_dump_json())
    return [
        fold_records(records, LIVE),
        step_by_step,
        fold(events[cut:], snapshot),
        fold_records(records[cut:], head),
    ]


def _kept(live: tuple[object, ...], full: tuple[object, ...], n: int) -> None:
    """`live` is a subsequence of `full` that holds its last `n` items."""
    it = iter(full)
    assert all(any(x == y for y in it) for x in live)
    assert live[-n:] == full[-n:] if full else live == ()


def assert_agrees(live: Projections, full: Projections) -> None:
    """Everything the live part keeps is as the full state has it."""
    ls, fs = live.session, full.session
    assert ls.window is not None and fs.window is None
    cut = {"turns", "calls", "confirmations", "files_changed", "changed_paths", "patch"}
    cut |= {"steps", "window", "agent"}
    assert ls.model_dump(exclude=cut) == fs.model_dump(exclude=cut)
    assert (ls.files_changed, ls.changed_paths, ls.patch, ls.steps) == ((), frozenset(), "", ())
    assert ls.files_count == fs.files_count == len(fs.changed_paths)
    assert ls.steps_count == len(fs.steps)
    assert ls.files_count_with(["a.py", "new/x.py"]) == fs.files_count_with(["a.py", "new/x.py"])
    _kept(ls.turns, fs.turns, KEEP)
    _kept(ls.calls, fs.calls, KEEP)
    _kept(ls.confirmations, fs.confirmations, KEEP)
    _kept(live.ledger.entries, full.ledger.entries, KEEP)
    assert {c.call_id for c in ls.waiting} == {c.call_id for c in fs.waiting}
    open_calls = [c for c in fs.calls if c.status in ("requested", "allowed", "started")]
    assert all(c in ls.calls for c in open_calls)
    assert live.quota == full.quota
    if fs.agent is None:
        assert ls.agent is None
    else:
        assert ls.agent is not None
        entries = fs.agent.entries[-AGENT_KEEP:]
        assert ls.agent == fs.agent.model_copy(update={"entries": entries})
        for entry in entries:  # the agent decides from these: their calls stay
            for c in entry.calls:
                if c.turn:
                    assert ls.call(f"c{c.turn}") == fs.call(f"c{c.turn}")
                    assert ls.turn(c.turn) == fs.turn(c.turn)


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), st.data())
def test_the_live_part_is_the_same_wherever_snapshots_were_taken(rng, data):
    events, records = stored("s1", long_session(rng, data.draw(st.integers(0, 60))))
    live = fold_records(records, LIVE)
    cut = data.draw(st.integers(0, len(events)))
    assert live_ways(events, records, cut) == [live] * 4
    assert_agrees(live, fold(events))


@pytest.mark.parametrize("seed", range(1, 9))
def test_short_random_sessions_keep_all_they_had_but_files_and_patch(seed):
    events, records = stored("s1", random_session(random.Random(seed)))
    live, full = fold_records(records, LIVE), fold(events)
    assert_agrees(live, full)
    assert live_ways(events, records, len(events) // 2) == [live] * 4


def test_the_live_part_stays_the_same_size_however_long_the_session():
    """Steps and changed files grow with the session here (one each a turn):
    the live part holds a count of the steps and 16 characters a file."""
    sizes = {}
    for turns in (300, 1_200):  # past the quota's RATE_WINDOW of call times, too
        _, records = stored("s1", session_payloads(turns))
        live = fold_records(records, LIVE)
        assert len(live.session.calls) == len(live.session.turns) == KEEP
        assert len(live.ledger.entries) == KEEP
        assert live.session.files_count == turns - 1  # turn 2 fails: its change is void
        assert len(live.session.window.paths) == 16 * (turns - 1)
        sizes[turns] = len(live.model_dump_json()) - 16 * turns
    assert sizes[1_200] - sizes[300] < 100  # the digits of the counts


# -- snapshots ------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'events.sqlite'}", upgrade=True)
    yield s
    s.close()


def _session(store, turns: int) -> list[Event]:
    """Session s1, after another stream's events: its positions are not its seqs."""
    store.append("s0", [new(e, i) for i, e in enumerate(long_session(random.Random(0), 3))], 0)
    batch = [new(e, i) for i, e in enumerate(long_session(random.Random(turns), turns))]
    return store.append("s1", batch, 0)


def test_load_snapshots_the_live_part_and_replay_equals_folding_it(store):
    events = _session(store, 120)
    state = load(store, "s1")
    seq, version, body = store.load_snapshot("s1")
    assert (seq, version) == (events[-1].seq, SNAPSHOT_VERSION)
    assert Projections.model_validate_json(body) == state == fold(events, LIVE)
    assert replay(store, "s1") == replay(store, "s1", use_snapshot=False) == state
    assert history(store, "s1") == fold(events)


@pytest.mark.parametrize("version", [SNAPSHOT_VERSION - 1, SNAPSHOT_VERSION])
def test_an_older_or_full_snapshot_is_rebuilt_not_trusted(store, version):
    """Version 5 snapshots held the whole state; a full state is never a
    snapshot, whatever version it claims: both are ignored and rebuilt."""
    events = _session(store, 120)
    full = fold(events)
    store.save_snapshot("s1", events[-1].seq, version, full.model_dump_json().encode())
    assert replay(store, "s1") == fold(events, LIVE)
    load(store, "s1")
    seq, saved, body = store.load_snapshot("s1")
    assert (seq, saved) == (events[-1].seq, SNAPSHOT_VERSION)
    assert Projections.model_validate_json(body) == fold(events, LIVE)


def test_a_history_of_some_types_folds_just_what_they_make(store):
    events = _session(store, 40)
    odd = p.ToolCallRequested(call_id="cx", turn=99, tool="shell", args={"type": "FileChanged"})
    events += store.append(
        "s1", [new(odd, len(events))], len(events)
    )  # "type":"FileChanged" inside
    full = fold(events)
    assert history(store, "s1") == full
    patch = history(store, "s1", {"FileChanged", "ToolCallCompleted", "ToolCallFailed"})
    assert patch.session.patch == full.session.patch
    assert patch.session.files_changed == full.session.files_changed
    assert patch.last_seq == full.last_seq
    assert history(store, "s1", upto=10) == fold(events[:10])
    assert "window" not in replay_json(full)["session"]

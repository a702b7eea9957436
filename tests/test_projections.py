"""Projections are pure folds: no store, no clock, no mocks.

The golden states under __snapshots__/test_projections/ were recorded from
the frozen fold that `apply` once was (before the one fold replaced it), so
they pin what every handler did; update them (`--snapshot-update`) only for
a change of behaviour you mean, and say so in the commit."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from syrupy.extensions.json import JSONSnapshotExtension

from events import payloads as p
from events.envelope import Event, genesis_hash, seal
from events.projections import RATE_WINDOW, Projections, QuotaUsage, apply, fold, fold_records
from events.upcast import current, decode
from tests.factories import T0, new, place, session_payloads, step_payloads
from tests.projection_streams import NAMED, random_session

SNAPSHOTS = Path(__file__).parent / "__snapshots__" / "test_projections"
GOLDEN = {name: make() for name, make in NAMED.items()}
GOLDEN.update({f"random-{seed}": random_session(random.Random(seed)) for seed in range(1, 9)})


def stored(stream_id: str, payloads: list[object]) -> tuple[list[Event], list[dict[str, object]]]:
    """The events as the store returns them, and as replay reads their bodies."""
    batch = [new(x, i) for i, x in enumerate(payloads)]
    sealed = seal(stream_id, batch, 0, genesis_hash(stream_id))
    events = [decode(seq, body, digest) for seq, body, digest in sealed]
    return events, [current(orjson.loads(body)) for _, body, _ in sealed]


def every_way(events: list[Event], records: list[dict[str, object]], cut: int) -> list[Projections]:
    """One stream folded each way the product folds it: in one go, from the
    stored JSON, event by event (live), and from a snapshot of a prefix."""
    step_by_step = Projections()
    for e in events:
        step_by_step = apply(step_by_step, e)
    snapshot = Projections.model_validate_json(fold(events[:cut]).model_dump_json())
    return [
        fold_records(records),
        step_by_step,
        fold(events[cut:], snapshot),
        fold_records(records[cut:], fold_records(records[:cut])),
    ]


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_streams_fold_to_their_recorded_states(name, snapshot):
    events, records = stored("s1", GOLDEN[name])
    whole = fold(events)
    dumped = whole.model_dump(mode="json")
    dumped["session"]["changed_paths"].sort()  # a set: its order changes from run to run
    assert dumped == snapshot(extension_class=JSONSnapshotExtension)
    assert Projections.model_validate_json(whole.model_dump_json()) == whole  # types, too
    assert every_way(events, records, len(events) // 2) == [whole] * 4


@pytest.mark.parametrize("name", list(GOLDEN))
def test_states_recorded_before_load_as_snapshots_and_fold_on(name):
    """The recorded states are what snapshots of the frozen fold held: they load,
    equal today's fold, and a tail folds onto them."""
    recorded = SNAPSHOTS / f"test_golden_streams_fold_to_their_recorded_states[{name}].json"
    state = Projections.model_validate_json(recorded.read_bytes())
    events, _ = stored("s1", GOLDEN[name])
    assert state == fold(events)
    tail = [e.model_copy(update={"seq": e.seq + len(events)}) for e in events]
    assert fold(tail, state) == fold(events + tail)


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False), st.data())
def test_replaying_any_session_equals_folding_it_incrementally(rng, data):
    events, records = stored("s1", random_session(rng))
    whole = fold(events)
    cut = data.draw(st.integers(0, len(events)))
    assert every_way(events, records, cut) == [whole] * 4


def test_rate_limits_see_the_most_recent_calls_only():
    calls = [
        p.ToolCallCompleted(call_id=f"c{i}", tool="search" if i % 3 else "shell")
        for i in range(2 * RATE_WINDOW + 5)
    ]
    quota = fold(place("s1", calls)).quota
    kept = range(len(calls) - RATE_WINDOW, len(calls))
    assert quota.recent_calls == tuple(T0 + timedelta(seconds=i) for i in kept)
    assert quota.recent_tools == tuple("search" if i % 3 else "shell" for i in kept)
    assert quota.calls_of("shell") == (2 * RATE_WINDOW + 5 + 2) // 3


def test_session_state_tracks_turns_files_and_patch():
    state = fold(place("s1", session_payloads(3))).session
    assert state.status == "completed"
    assert [(t.turn, t.status) for t in state.turns] == [(1, "ok"), (2, "failed"), (3, "ok")]
    # step 2 failed: its planned change is void and not in the patch
    assert [c.path for c in state.files_changed] == ["f1.py", "f3.py"]
    assert state.patch == "--- a/f1.py\n+++ b/f1.py\n--- a/f3.py\n+++ b/f3.py\n"
    assert state.pending == ()


def test_a_started_call_without_completion_keeps_its_changes_pending():
    payloads = session_payloads(1)[:-3]  # started + FileChanged, then the worker died
    state = fold(place("s1", payloads)).session
    assert state.calls[-1].status == "started"
    assert [c.path for c in state.pending] == ["f1.py"]
    assert state.files_changed == ()


def test_quota_counts_calls_that_ran_and_shell_resources():
    quota = fold(place("s1", session_payloads(3))).quota
    assert quota.tool_calls == (("replace", 1), ("shell", 2))
    assert quota.tool_failures == 1
    assert quota.shell_cpu_s == 0.25 * 2  # two shell calls completed
    assert quota.output_bytes == 10 + 3 + 10


def test_a_call_that_never_started_costs_no_quota():
    payloads = [p.SessionStarted(job_id="j", target="/w", steps=("s",))] + step_payloads(
        1, "shell"
    )[:3]  # requested and decided only
    assert fold(place("s1", payloads)).quota == QuotaUsage()


def test_permission_ledger_records_each_decision_with_rule_and_policy():
    ledger = fold(place("s1", session_payloads(2))).ledger
    assert [(x.call_id, x.tool, x.decision, x.rule_id, x.seq) for x in ledger.entries] == [
        ("c1", "shell", "allow", "default-allow", 4),
        ("c2", "replace", "allow", "default-allow", 11),
    ]
    assert all(x.decided_by == "test" and x.policy_hash == "h" * 64 for x in ledger.entries)

"""Projections are pure folds: no store, no clock, no mocks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from events import payloads as p
from events.projections import Projections, QuotaUsage, apply, fold
from tests.factories import place, session_payloads, step_payloads


@st.composite
def sessions(draw: st.DrawFn) -> list[object]:
    """Any valid session: steps that succeed, fail or stop half-way (a crash)."""
    out: list[object] = [p.SessionStarted(job_id="j", target="/w", steps=("s",))]
    if draw(st.booleans()):
        out.append(
            p.PolicyAttached(
                name="team",
                hash="h" * 64,
                document={"tier": "exec"},
                tier=draw(st.sampled_from(["read-only", "exec"])),
                elevated_by=draw(st.sampled_from([None, "user:ops"])),
            )
        )
    turns = draw(st.integers(0, 12))
    for turn in range(1, turns + 1):
        tool = draw(st.sampled_from(["search", "replace", "write", "patch", "shell"]))
        files = draw(st.lists(st.sampled_from(["a.py", "b.py", "c/d.py"]), max_size=3, unique=True))
        outcome = draw(st.sampled_from(["ok", "failed", "interrupted", "asked"]))
        steps = step_payloads(turn, tool, ok=outcome != "failed")
        head, tail = steps[:4], steps[4:]
        if outcome == "asked":  # the call waits for an operator, then goes on
            answer = draw(st.sampled_from(["granted", "denied", "pending"]))
            out += head[:3] + [
                p.ConfirmationRequested(
                    call_id=f"c{turn}", turn=turn, tool=tool, rule_id="destructive-rm", reason="r"
                )
            ]
            if answer == "pending":
                break
            cls = p.ConfirmationGranted if answer == "granted" else p.ConfirmationDenied
            out.append(cls(call_id=f"c{turn}", by="user:ops", reason="checked"))
            if answer == "denied":
                continue
            head = head[3:]
        changes = [
            p.FileChanged(
                call_id=f"c{turn}",
                path=f,
                before_hash=f"h{turn - 1}",
                after_hash=f"h{turn}",
                diff=f"diff {f} {turn}\n",
            )
            for f in files
        ]
        out += head + changes + ([] if outcome == "interrupted" else tail)
        if outcome == "interrupted":
            break
    end = draw(st.sampled_from(["completed", "failed", "open"]))
    if end == "completed":
        out.append(p.SessionCompleted(files_changed=0))
    elif end == "failed":
        out.append(p.SessionFailed(error="X", message="y"))
    return out


@settings(max_examples=150, deadline=None)
@given(sessions(), st.data())
def test_replaying_any_session_equals_folding_it_incrementally(payloads, data):
    events = place("s1", payloads)
    whole = fold(events)
    cut = data.draw(st.integers(0, len(events)))
    # The incremental path: a snapshot (serialized state) of a prefix, then the tail.
    snapshot = Projections.model_validate_json(fold(events[:cut]).model_dump_json())
    assert fold(events[cut:], snapshot) == whole
    step_by_step = Projections()
    for e in events:
        step_by_step = apply(step_by_step, e)
    assert step_by_step == whole


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

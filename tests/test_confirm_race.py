"""An answer and the job's own chain race: the chain's later links may run
after a confirmation was granted but before the continuation the answer
enqueued. They must wait for it, not skip the granted step. Real runner,
real SQLite store, the tasks' calls made in the order that race produces."""

from __future__ import annotations

from pathlib import Path

from events.replay import replay
from events.store import open_store
from orchestrator.run import confirmations, jobs
from orchestrator.run.jobspec import parse_spec
from orchestrator.run.runner import Runner


def test_a_later_step_waits_for_a_granted_step_its_continuation_has_not_run(tmp_path: Path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "notes.txt").write_text("scratch\n")
    store = open_store(f"sqlite:///{tmp_path / 'events.sqlite'}", upgrade=True)
    spec = parse_spec(
        "name: tidy\ntargets: [repo]\nsteps:\n"
        "  - {kind: delete, path: notes.txt}\n"
        "  - {kind: search, pattern: scratch}\n"
    )
    job_id, [t] = jobs.prepare(spec, tmp_path)
    jobs.record(store, spec, job_id, [t], "user:sub")
    runner = Runner(store, "worker:a")
    assert runner.run_step(t, 0, spec.steps[0], last=False) == "waiting"
    [w] = confirmations.pending(store)
    ours, ticket, start, steps = confirmations.answer(store, w, grant=True, by="api:ope", reason="")
    assert ours and start == 0
    # The job's own chain, link 2, runs before the continuation:
    assert runner.run_step(t, 1, spec.steps[1], last=True) == "waiting"
    assert replay(store, t.session_id).session.status == "running"
    # ... then the continuation runs both steps.
    assert runner.run_step(ticket, 0, steps[0], last=False) == "running"
    assert runner.run_step(ticket, 1, steps[1], last=True) == "completed"
    assert not (tmp_path / "repo" / "notes.txt").exists()
    store.close()

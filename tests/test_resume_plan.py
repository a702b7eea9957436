"""Resuming a session that never started (its worker died between receiving
the step and starting it: the reaper's case) rebuilds the ticket `submit`
made, from the job's stream alone: the same workspace whatever folder the
resumer runs in, and the same combined policy, tier and elevation, never the
spec's weaker policy alone."""

from __future__ import annotations

from pathlib import Path

from orchestrator.guard.policy import PolicyDoc
from orchestrator.run import jobs
from orchestrator.run.jobspec import JobSpec
from orchestrator.service import resume
from tests.conftest import sqlite_store

SPEC = {"name": "r", "targets": ["repo"], "steps": [{"kind": "shell", "command": "true"}]}


def test_a_never_started_session_resumes_in_its_folder_under_its_submitted_policy(
    tmp_path: Path,
) -> None:
    (tmp_path / "repo").mkdir()
    operator = PolicyDoc(name="operator", tier="read-only")
    spec = JobSpec.model_validate(SPEC)
    job_id, tickets = jobs.prepare(
        spec, tmp_path, policy_files=(operator,), tier="read-write", elevated_by="alice"
    )
    store = sqlite_store(tmp_path)
    jobs.record(store, spec, job_id, tickets, actor="user:test")

    (found,) = resume.plan(store, job_id, base_dir=Path("/"))

    assert found.start == 0
    assert found.ticket.path == str(tmp_path / "repo") == tickets[0].path
    assert found.ticket.error is None
    assert found.ticket.policy == tickets[0].policy
    assert found.ticket.policy["name"] != PolicyDoc().name  # the operator's, combined
    assert (found.ticket.tier, found.ticket.elevated_by) == (tickets[0].tier, "alice")
    store.close()

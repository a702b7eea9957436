"""Policies on real jobs: --tier, --policy, --allow-destructive and a job
spec's own policy, through the CLI, a real worker and the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_helpers import cli, cli_json, shape_env

pytestmark = pytest.mark.slow

JOB = """
name: cleanup
targets: [repo]
steps:
  - kind: replace
    pattern: 'old_name'
    replacement: new_name
  - kind: shell
    command: sh -c "rm -f junk.txt"
"""


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "mod.py").write_text("old_name = 1\n")
    (repo / "junk.txt").write_text("junk")
    (tmp_path / "job.yaml").write_text(JOB)
    return repo


def test_a_destructive_step_waits_for_approval_and_runs_once_approved(tmp_path: Path):
    repo = _repo(tmp_path)
    env = shape_env(tmp_path)
    held = cli(env, "run", str(tmp_path / "job.yaml"), "--base-dir", str(tmp_path), "--json")
    assert held.returncode == 3, held.stderr
    [session] = json.loads(held.stdout)["sessions"]
    assert session["status"] == "waiting" and (repo / "junk.txt").exists()
    assert "orchestrator approve" in held.stderr
    [waiting] = cli_json(env, "pending")
    assert (waiting["rule_id"], waiting["turn"]) == ("destructive-rm", 2)
    assert waiting["args"]["command"] == ["sh", "-c", "rm -f junk.txt"]

    approved = cli(env, "approve", waiting["call_id"][:30], "--reason", "junk is junk", "--wait")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert not (repo / "junk.txt").exists()
    assert cli_json(env, "pending") == []
    state = cli_json(env, "audit", "replay", session["session_id"])
    assert state["session"]["status"] == "completed"
    rm = state["ledger"]["entries"][-1]
    assert (rm["decision"], rm["confirmation"]) == ("ask", "granted")
    assert rm["confirmed_by"].startswith("user:")
    again = cli(env, "approve", waiting["call_id"])
    assert again.returncode == 2 and "no confirmation" in again.stderr


def test_an_elevated_job_runs_destructive_steps_without_asking(tmp_path: Path):
    repo = _repo(tmp_path)
    env = shape_env(tmp_path)
    elevated = cli(
        env,
        "run",
        str(tmp_path / "job.yaml"),
        "--base-dir",
        str(tmp_path),
        "--json",
        "--allow-destructive",
    )
    assert elevated.returncode == 0, elevated.stdout + elevated.stderr
    [session] = json.loads(elevated.stdout)["sessions"]
    assert not (repo / "junk.txt").exists()
    state = cli_json(env, "audit", "replay", session["session_id"])
    assert state["session"]["elevated_by"].startswith("user:")
    rm = state["ledger"]["entries"][-1]
    assert (rm["decision"], rm["rule_id"]) == ("allow", "destructive-rm")
    assert "allow-destructive" in rm["reason"]


def test_tier_flag_and_job_policy_are_recorded_and_enforced(tmp_path: Path):
    _repo(tmp_path)
    env = shape_env(tmp_path)
    result = cli(
        env,
        "run",
        str(tmp_path / "job.yaml"),
        "--base-dir",
        str(tmp_path),
        "--json",
        "--tier",
        "read-only",
    )
    assert result.returncode == 3
    [session] = json.loads(result.stdout)["sessions"]
    assert "tier read-only" in session["error"] and "--tier read-write" in session["error"]
    state = cli_json(env, "audit", "replay", session["session_id"])
    assert state["session"]["tier"] == "read-only"
    assert state["session"]["policy_hash"] == state["ledger"]["entries"][0]["policy_hash"]

    policy = tmp_path / "team.yaml"
    policy.write_text("name: team\nsession_limits: {tool_calls: {replace: 0}}\n")
    limited = cli(
        env,
        "run",
        str(tmp_path / "job.yaml"),
        "--base-dir",
        str(tmp_path),
        "--json",
        "--policy",
        str(policy),
    )
    assert limited.returncode == 3
    [session] = json.loads(limited.stdout)["sessions"]
    assert "quota:tool_calls:replace" in session["error"]
    events = cli(env, "audit", "export", "--stream", session["session_id"]).stdout
    assert '"QuotaExceeded"' in events and '"name":"team"' in events


def test_a_broken_policy_file_is_refused_before_anything_is_enqueued(tmp_path: Path):
    _repo(tmp_path)
    env = shape_env(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "commands:\n  rules:\n    - {id: x, decision: allow, command: ls, match: [cat x]}\n"
    )
    result = cli(
        env, "submit", str(tmp_path / "job.yaml"), "--base-dir", str(tmp_path), "--policy", str(bad)
    )
    assert result.returncode == 2
    assert "example 'cat x' should match" in result.stderr
    assert not (tmp_path / "state" / "events.sqlite").exists()

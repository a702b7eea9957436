"""The example job end to end through a real worker, on both deployment shapes:
SQLite store + embedded broker, and PostgreSQL store + Redis broker (and the
first test on PostgreSQL + RabbitMQ too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from events.store import SqlEventStore
from orchestrator.run.sample_repos import create_sample_repos
from tests.cli_helpers import ROOT, cli, cli_json

EXAMPLE = ROOT / "orchestrator" / "examples" / "rename-function.yaml"

pytestmark = pytest.mark.slow


REDIS_DB = 12


@pytest.fixture
def env(deployment_env: dict[str, str]) -> dict[str, str]:
    return deployment_env


def test_example_job_produces_patches_and_a_replay_that_matches(env, tmp_path: Path):
    repos = create_sample_repos(tmp_path / "sample-repos")
    result = cli(
        env,
        "run",
        str(EXAMPLE),
        "--base-dir",
        str(tmp_path),
        "--json",
        "--out",
        str(tmp_path / "patches"),
    )
    assert result.returncode == 0, result.stderr
    import json

    job = json.loads(result.stdout)
    assert job["status"] == "completed"
    assert {s["status"] for s in job["sessions"]} == {"completed"}
    assert len(job["sessions"]) == len(repos)
    for session in job["sessions"]:
        assert "-" in session["patch"] and "+" in session["patch"]
        assert "load_user" in session["patch"]
        patch_file = tmp_path / "patches" / f"{Path(session['target']).name}.patch"
        assert any(p.read_text() == session["patch"] for p in (tmp_path / "patches").iterdir()), (
            patch_file
        )
        replayed = cli_json(env, "audit", "replay", session["session_id"])
        assert replayed["session"]["status"] == "completed"
        assert replayed["session"]["patch"] == session["patch"]
        assert [c["path"] for c in replayed["session"]["files_changed"]] == session["files_changed"]
        assert all(x["decision"] == "allow" for x in replayed["ledger"]["entries"])
        assert len(replayed["ledger"]["entries"]) == len(replayed["session"]["turns"])
    for repo in repos:
        text = "".join(p.read_text() for p in repo.rglob("*.py"))
        assert "fetch_user" not in text and "load_user" in text
    verified = cli_json(env, "audit", "verify")
    assert verified["ok"] and verified["events"] > 0
    status = cli_json(env, "status", job["job_id"])
    assert status["status"] == "completed"


@pytest.mark.postgres
def test_the_example_job_runs_the_same_on_a_rabbitmq_broker(
    pg_url: str, rabbitmq_url: str, tmp_path: Path
) -> None:
    """RabbitMQ is a first-class broker: the same job, patches and replay."""
    from tests.cli_helpers import shape_env

    env = shape_env(
        tmp_path, store_url=pg_url, broker_url=rabbitmq_url, ORCH_WORKER_CONCURRENCY="2"
    )
    test_example_job_produces_patches_and_a_replay_that_matches(env, tmp_path)


def test_missing_target_fails_alone_and_the_others_still_run(env, tmp_path: Path):
    create_sample_repos(tmp_path / "sample-repos", count=2)
    spec = tmp_path / "job.yaml"
    spec.write_text(EXAMPLE.read_text().replace("targets:", "targets:\n  - no-such-repo", 1))
    result = cli(env, "run", str(spec), "--base-dir", str(tmp_path), "--json")
    assert result.returncode == 1, result.stderr
    import json

    job = json.loads(result.stdout)
    by_target = {s["target"]: s for s in job["sessions"]}
    assert by_target["no-such-repo"]["status"] == "failed"
    assert "does not exist" in by_target["no-such-repo"]["error"]
    others = [s for t, s in by_target.items() if t != "no-such-repo"]
    assert len(others) == 2 and all(s["status"] == "completed" for s in others)


def test_malformed_spec_is_refused_with_its_position_and_nothing_is_appended(env, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\ntargets: [x]\nsteps:\n  - kind: replace\n    pattern: a\n")
    result = cli(env, "submit", str(spec))
    assert result.returncode == 2
    assert "replacement" in result.stderr and "line 4" in result.stderr
    if "ORCH_STORE_URL" in env:
        store = SqlEventStore(env["ORCH_STORE_URL"])
        assert not [
            e for e in store.read_all() if e.type == "JobSubmitted" and e.payload.name == "bad"
        ]
    else:
        assert not (Path(env["ORCH_STATE_DIR"]) / "events.sqlite").exists()


def test_each_target_runs_its_own_rename_from_its_vars(env, tmp_path: Path):
    """Three repositories, three different renames, one step: `{{ vars.* }}`
    is rendered per target, and the patches and replays say what ran where."""
    renames = {"a": ("alpha", "first"), "b": ("beta", "second"), "c": ("gamma", "third")}
    for name, (old, _) in renames.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "mod.py").write_text(f"def {old}():\n    return 1\n\nx = {old}()\n")
    targets = "\n".join(
        f"  - path: {n}\n    vars: {{old: {o}, new: {w}}}" for n, (o, w) in renames.items()
    )
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: renames\ntargets:\n"
        + targets
        + "\nsteps:\n  - kind: replace\n    pattern: '\\b{{ vars.old }}\\b'\n"
        "    replacement: '{{ vars.new }}'\n    glob: ['**/*.py']\n    expect: {min: 2}\n"
    )
    result = cli(env, "run", str(spec), "--base-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    import json

    job = json.loads(result.stdout)
    assert {s["status"] for s in job["sessions"]} == {"completed"}
    for name, (_, new) in renames.items():
        text = (tmp_path / name / "mod.py").read_text()
        assert text == f"def {new}():\n    return 1\n\nx = {new}()\n"
    by_target = {s["target"]: s for s in job["sessions"]}
    replayed = cli_json(env, "audit", "replay", by_target["b"]["session_id"])
    assert replayed["session"]["patch"] == by_target["b"]["patch"]
    assert "+def second():" in by_target["b"]["patch"]


def test_a_target_missing_a_variable_is_refused_at_submission(env, tmp_path: Path):
    (tmp_path / "a").mkdir()
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: renames\ntargets:\n  - path: a\n    vars: {old: x}\nsteps:\n"
        "  - kind: replace\n    pattern: '{{ vars.old }}'\n    replacement: '{{ vars.new }}'\n"
    )
    result = cli(env, "submit", str(spec))
    assert result.returncode == 2
    assert "new" in result.stderr and "a" in result.stderr

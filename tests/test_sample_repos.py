"""The sample repositories: real packages whose tests pass before and after
each shipped example job, which these tests run step by step with the real
tools (the worker runs the same steps; tests/test_e2e.py covers that path)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.errors import ToolError, UserError
from orchestrator.run.jobspec import load_spec, resolve_targets
from orchestrator.run.runner import plan
from orchestrator.run.sample_repos import MARKER, create_sample_repos
from orchestrator.run.steps import SearchStep, ShellStep, Step
from orchestrator.tools.files import apply_edits
from orchestrator.tools.search import search
from orchestrator.tools.shell import run_shell

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "orchestrator" / "examples"
FETCH_USER = re.compile(r"\bfetch_user\b")
OLD_ASSERT = re.compile(r"\.assert(Not)?Equals\(")


def run_tests(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unittest", "discover", "-q"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"},
    )


def run_steps(workspace: Path, steps: tuple[Step, ...]) -> None:
    """A session's steps in order, as the runner carries them out."""
    for step in steps:
        if isinstance(step, SearchStep):
            search(workspace, step)
        elif isinstance(step, ShellStep):
            run_shell(workspace, step)
        else:
            apply_edits(workspace, plan(workspace, step).edits)


def python_text(repo: Path) -> str:
    return "".join(p.read_text() for p in sorted(repo.rglob("*.py")))


def snapshot(repo: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(repo)): p.read_bytes()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and ".git" not in p.parts
    }


def test_each_sample_repo_passes_its_own_tests(tmp_path: Path):
    repos = create_sample_repos(tmp_path / "sample-repos")
    assert [r.name for r in repos] == ["billing", "accounts", "notifications"]
    for repo in repos:
        result = run_tests(repo)
        assert result.returncode == 0, result.stderr
        assert re.search(r"Ran [1-9]\d* tests", result.stderr)


def test_the_sample_repos_hold_what_the_examples_change(tmp_path: Path):
    repos = create_sample_repos(tmp_path / "sample-repos")
    counts = [len(FETCH_USER.findall(python_text(r))) for r in repos]
    assert all(1 <= n <= 100 for n in counts)  # rename-function's expect range
    assert len(set(counts)) == len(counts)  # each repo has its own count
    for repo in repos:
        tests = "".join(p.read_text() for p in (repo / "tests").glob("test_*.py"))
        assert "fetch_user" in tests  # the rename must rewrite tests too
        assert OLD_ASSERT.search(tests)
        lines = (repo / "pyproject.toml").read_text().splitlines()
        assert lines[3:6] == [
            'version = "0.1.0"',
            'requires-python = ">=3.9"',
            "dependencies = []",
        ]  # add-license's patch context
        assert not (repo / "LICENSE").exists()


# The recipe examples, run step by step here; agent examples run through a real
# worker in tests/test_agent_jobs.py.
RECIPES = [e for e in sorted(EXAMPLES.glob("*.yaml")) if load_spec(e).agent is None]


@pytest.mark.parametrize("example", RECIPES, ids=lambda p: p.stem)
def test_each_example_runs_on_fresh_sample_repos_and_their_tests_pass(
    example: Path, tmp_path: Path
):
    create_sample_repos(tmp_path / "sample-repos")
    spec = load_spec(example)
    targets = resolve_targets(spec, tmp_path)
    assert [name for name, _, _ in targets] == [
        "sample-repos/accounts",
        "sample-repos/billing",
        "sample-repos/notifications",
    ]
    for _, repo, error in targets:
        assert error is None and repo is not None
        before = snapshot(repo)
        run_steps(repo, spec.steps)  # ends with the repo's tests
        assert snapshot(repo) != before
        assert run_tests(repo).returncode == 0


def test_the_examples_do_what_they_say(tmp_path: Path):
    [repo] = create_sample_repos(tmp_path / "sample-repos", count=1)
    for name in ("rename-function", "fix-deprecations", "add-license"):
        run_steps(repo, load_spec(EXAMPLES / f"{name}.yaml").steps)
    text = python_text(repo)
    assert not FETCH_USER.search(text) and "load_user" in text
    assert not OLD_ASSERT.search(text) and ".assertEqual(" in text
    assert (repo / "LICENSE").read_text().startswith("MIT License\n")
    assert 'license = { file = "LICENSE" }\n' in (repo / "pyproject.toml").read_text()


@pytest.mark.parametrize("example", RECIPES, ids=lambda p: p.stem)
def test_a_second_run_of_an_example_fails_at_its_first_step_and_changes_nothing(
    example: Path, tmp_path: Path
):
    [repo] = create_sample_repos(tmp_path / "sample-repos", count=1)
    steps = load_spec(example).steps
    run_steps(repo, steps)
    after = snapshot(repo)
    with pytest.raises(ToolError):
        run_steps(repo, steps[:1])
    assert snapshot(repo) == after


def test_creating_again_resets_the_repos_and_leaves_other_files_alone(tmp_path: Path):
    dest = tmp_path / "sample-repos"
    first = create_sample_repos(dest, count=3)
    fresh = snapshot(first[0])
    (first[0] / "billing" / "users.py").write_text("broken")
    (dest / "notes.txt").write_text("mine")
    (dest / "mine").mkdir()
    second = create_sample_repos(dest, count=2)
    assert snapshot(second[0]) == fresh
    assert sorted(p.name for p in dest.iterdir()) == ["accounts", "billing", "mine", "notes.txt"]


def test_a_folder_it_did_not_create_is_refused_and_nothing_changes(tmp_path: Path):
    dest = tmp_path / "sample-repos"
    (dest / "accounts").mkdir(parents=True)
    (dest / "accounts" / "precious.txt").write_text("keep")
    with pytest.raises(UserError, match=f"refusing to replace .*accounts.*no {MARKER}"):
        create_sample_repos(dest)
    assert sorted(p.name for p in dest.iterdir()) == ["accounts"]
    assert (dest / "accounts" / "precious.txt").read_text() == "keep"


def test_more_repos_than_templates_get_their_own_names_and_packages(tmp_path: Path):
    repos = create_sample_repos(tmp_path / "sample-repos", count=4)
    assert repos[3].name == "billing-2"
    assert (repos[3] / "billing_2" / "invoices.py").is_file()
    assert run_tests(repos[3]).returncode == 0


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_with_git_each_repo_is_one_clean_commit_with_the_same_id_every_time(tmp_path: Path):
    def git(repo: Path, *args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    one = create_sample_repos(tmp_path / "one", count=1)[0]
    two = create_sample_repos(tmp_path / "two", count=1)[0]
    assert git(one, "rev-list", "--count", "HEAD") == "1"
    assert git(one, "status", "--porcelain") == ""
    assert git(one, "rev-parse", "HEAD") == git(two, "rev-parse", "HEAD")

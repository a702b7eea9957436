"""The CI and release workflows: every action pinned by commit SHA, the jobs
that publish hold the permissions they need and no job holds more, and the
release tag rule accepts exactly vX.Y.Z and vX.Y.Z-rc.N (docs/releasing.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def steps(workflow: dict) -> list[dict]:
    return [s for job in workflow["jobs"].values() for s in job.get("steps", [])]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_by_commit_sha_with_its_tag_in_a_comment(path: Path) -> None:
    uses = re.findall(r"uses: (\S+)(.*)", path.read_text())
    assert uses
    for ref, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), ref
        assert re.match(r"\s+# v\d", comment), f"{ref}: say which tag the SHA is"


def test_publishing_jobs_get_id_token_and_the_rest_read_only() -> None:
    wf = load("release.yml")
    assert wf["permissions"] == {"contents": "read"}
    jobs = wf["jobs"]
    assert jobs["pypi"]["permissions"] == {"id-token": "write"}
    assert jobs["pypi"]["environment"]["name"] == "pypi"
    assert jobs["image"]["permissions"]["packages"] == "write"
    assert jobs["image"]["permissions"]["id-token"] == "write"
    assert jobs["github-release"]["permissions"]["contents"] == "write"
    for name in ("meta", "build", "smoke"):
        assert "permissions" not in jobs[name], name
    # Built once, tested, then published: the publishing jobs only download.
    assert set(jobs["smoke"]["needs"]) >= {"build"}
    assert set(jobs["pypi"]["needs"]) >= {"smoke", "image"}
    for name in ("pypi", "github-release"):
        assert not any("build" in s.get("run", "") for s in jobs[name]["steps"]), name


def test_the_image_is_pushed_with_an_sbom_and_signed_by_digest() -> None:
    job = load("release.yml")["jobs"]["image"]
    push = next(s for s in job["steps"] if s.get("id") == "push")
    assert push["with"]["sbom"] is True and push["with"]["push"] is True
    assert "VERSION=" in push["with"]["build-args"]
    sign = next(s for s in job["steps"] if "cosign sign" in s.get("run", ""))
    assert "$DIGEST" in sign["run"]


def tag_rule() -> re.Pattern[str]:
    run = next(s["run"] for s in steps(load("release.yml")) if s.get("id") == "v")
    return re.compile(re.search(r'"\$TAG" =~ (\S+) \]\]', run).group(1))


@pytest.mark.parametrize(
    "tag,ok",
    [
        ("v1.2.3", True),
        ("v1.2.3-rc.1", True),
        ("v10.0.12-rc.7", True),
        ("1.2.3", False),
        ("v1.2", False),
        ("v1.2.3rc1", False),
        ("v1.2.3-beta.1", False),
        ("v1.2.3-rc", False),
    ],
)
def test_release_tags_are_semantic_versions(tag: str, ok: bool) -> None:
    assert bool(tag_rule().fullmatch(tag)) is ok


def test_ci_runs_the_suite_with_services_and_the_readme_test_command() -> None:
    job = load("ci.yml")["jobs"]["test"]
    assert set(job["services"]) == {"postgres", "redis"}
    assert job["env"]["ORCH_REQUIRE_SERVICES"] == "1"
    assert {"ORCH_TEST_PG_URL", "ORCH_TEST_REDIS_URL"} <= set(job["env"])
    runs = " ".join(s.get("run", "") for s in job["steps"])
    assert "make test" in runs and "playwright install" not in runs
    assert "chromium" in runs and "bubblewrap" in runs


def test_workflows_validate_against_the_github_schema() -> None:
    exe = Path(sys.executable).parent / "check-jsonschema"
    if not exe.exists():
        pytest.skip("check-jsonschema is not installed (the `lint` extra)")
    r = subprocess.run(
        [str(exe), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr

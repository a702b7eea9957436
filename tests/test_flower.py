"""Flower on the project's app, in a real headless Chromium: a job's tasks are
listed under their `orchestrator.*` names with a short masked summary of
their arguments, and neither the spec's content nor a secret reaches the page
or Flower's API."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.cli_helpers import ROOT, cli, shape_env
from tests.conftest import redis_db_url, unavailable
from tests.ops_helpers import free_port, get, start_worker, stop, wait_until
from tests.processes import dies_with_us, running

pytestmark = [pytest.mark.slow, pytest.mark.redis]
REDIS_DB = 7
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
USER, PASSWORD = "ops", "flower-pass-7d1e"
MARKER = "SPEC-CONTENT-9f3b1c"  # in the replacement text only
SECRET = "hunter2hunter2"  # after password=, in the step's replacement
NAME_SECRET = "abcd1234efgh5678"  # after token=, in a step's name

SPEC = f"""\
name: flower-visible
tier: read-write
targets: [ws]
steps:
  - kind: replace
    name: "rename token={NAME_SECRET}"
    pattern: old_name
    replacement: "new_name  # {MARKER} password={SECRET}"
    literal: true
  - kind: read
    name: read-back
    path: mod.py
"""


@pytest.fixture
def env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    import redis

    url = redis_db_url(REDIS_DB)
    redis.Redis.from_url(url).flushdb()
    return shape_env(tmp_path, broker_url=url, ORCH_FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}")


@pytest.fixture
def flower(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli.main",
            "flower",
            "--port",
            str(port),
            "--address",
            "127.0.0.1",
        ],
        env=env,
        cwd=ROOT,
        stdout=open(tmp_path / "flower.log", "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=dies_with_us(),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until("Flower", lambda: get(base + "/healthcheck")[0] == 200, timeout=60)
        yield base
    finally:
        stop(proc)


def test_flower_lists_the_jobs_tasks_with_masked_summaries_only(env, flower, tmp_path):
    if not Path(CHROMIUM).exists():
        unavailable("Chromium", FileNotFoundError(f"{CHROMIUM} (apt-get install chromium)"))
    from playwright.sync_api import sync_playwright

    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "mod.py").write_text("def old_name():\n    return 1\n")
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC)
    worker = start_worker(env, tmp_path / "worker.log", name="flower")
    try:
        result = cli(
            env, "run", str(spec), "--base-dir", str(tmp_path), "--json", "--timeout", "120"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        job = json.loads(result.stdout)
        job_id, session_id = job["job_id"], job["sessions"][0]["session_id"]
        tag = f"--orch-test-{uuid.uuid4().hex}"  # finds this test's browser
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, tag])
            profiles = _profiles(tag)
            try:
                page = browser.new_context(
                    http_credentials={"username": USER, "password": PASSWORD}
                ).new_page()

                def listed() -> str | None:
                    page.goto(flower + "/tasks", timeout=30_000)
                    page.wait_for_selector("#tasks-table tbody tr", timeout=10_000)
                    text = page.inner_text("#tasks-table")
                    return text if text.count("orchestrator.run_step") >= 2 else None

                table = wait_until("Flower's task list", listed, timeout=90, every=1)
                html = page.content()
            finally:
                browser.close()
        api = _api_tasks(flower)
    finally:
        stop(worker)
    for step in ("step=1 replace (rename token=***)", "step=2 read (read-back)"):
        assert f"job={job_id} target=ws {step} session={session_id}" in table, table
    shown = json.dumps(api)
    for secret in (MARKER, SECRET, NAME_SECRET, "old_name", "policy"):
        assert secret not in html and secret not in table and secret not in shown, secret
    assert {t["name"] for t in api.values()} >= {"orchestrator.run_step"}
    assert wait_until(
        "the browser's processes to exit",
        lambda: not any(running(p) for p in profiles) and not running(tag),
        timeout=30,
    )


def _profiles(tag: str) -> list[str]:
    """The --user-data-dir of this test's browser (its children carry it too)."""
    found = []
    for pid in running(tag):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        found += [a.decode().split("=", 1)[1] for a in cmdline if a.startswith(b"--user-data-dir=")]
    return found


def _api_tasks(base: str) -> dict[str, dict[str, object]]:
    import base64
    import urllib.request

    request = urllib.request.Request(
        base + "/api/tasks",
        headers={
            "Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        },
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def test_flower_gets_basic_auth_in_its_environment_never_on_its_command_line(tmp_path):
    from pydantic import SecretStr

    from orchestrator.cli.ops import flower_command
    from orchestrator.config.settings import Settings

    s = Settings(
        state_dir=tmp_path,
        broker_url="redis://127.0.0.1:6379/7",
        flower_basic_auth=SecretStr(f"{USER}:{PASSWORD}"),
        flower_port=5566,
    )
    cmd, env = flower_command(s, extra=["--purge_offline_workers=60"])
    assert cmd[4:] == [
        "tasks.app",
        "flower",
        "--port=5566",
        "--address=127.0.0.1",
        "--tasks_columns=name,uuid,state,args,result,received,runtime,worker",
        "--purge_offline_workers=60",
    ]
    assert PASSWORD not in " ".join(cmd) and env["FLOWER_BASIC_AUTH"] == f"{USER}:{PASSWORD}"


FAILING_SPEC = """\
name: flower-failed
tier: read-write
targets: [ws, broken]
steps:
  - {kind: read, name: first-read, path: mod.py}
  - {kind: read, name: second-read, path: mod.py}
"""


def test_a_failed_step_is_a_celery_failure_and_its_chain_stops(env, flower, tmp_path):
    """The step that failed is FAILURE in Flower with the recorded reason; the
    other target's steps are SUCCESS; the failed session's second step is
    never sent, nothing is retried, and the job's record is unchanged."""
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "mod.py").write_text("x = 1\n")
    (tmp_path / "broken").mkdir()  # no mod.py: step 1 fails
    spec = tmp_path / "job.yaml"
    spec.write_text(FAILING_SPEC)
    worker = start_worker(env, tmp_path / "worker.log", name="flower-fail")
    try:
        result = cli(
            env, "run", str(spec), "--base-dir", str(tmp_path), "--json", "--timeout", "120"
        )
        assert result.returncode == 1, result.stdout + result.stderr
        job = json.loads(result.stdout)
        assert job["status"] == "failed"
        broken = next(s for s in job["sessions"] if s["target"] == "broken")

        def seen() -> list[dict[str, object]] | None:
            tasks = [t for t in _api_tasks(flower).values() if t["name"] == "orchestrator.run_step"]
            done = [t for t in tasks if t["state"] in ("SUCCESS", "FAILURE")]
            return done if len(done) >= 3 else None

        tasks = wait_until("Flower's view of the job's tasks", seen, timeout=90, every=1)
    finally:
        stop(worker)
    by_args = {str(t["args"]): t for t in tasks}
    failed = [t for t in tasks if t["state"] == "FAILURE"]
    assert len(failed) == 1, by_args
    assert f"target=broken step=1 read (first-read) session={broken['session_id']}" in str(
        failed[0]["args"]
    )
    assert "StepFailed" in str(failed[0]["exception"]) and "mod.py" in str(failed[0]["exception"])
    assert not any("target=broken step=2" in a for a in by_args), by_args
    assert sorted(t["state"] for t in tasks if "target=ws " in str(t["args"])) == ["SUCCESS"] * 2
    assert not any(t.get("retries") for t in tasks)
    # The result backend keeps the failure (AsyncResult says FAILURE and why)
    # and no success: the event store is a step's record (tasks.steps).
    backend = Celery(broker=env["ORCH_BROKER_URL"], backend=env["ORCH_BROKER_URL"])
    stored = {t["uuid"]: backend.AsyncResult(t["uuid"]) for t in tasks}
    assert stored[failed[0]["uuid"]].state == "FAILURE"
    assert "mod.py" in str(stored[failed[0]["uuid"]].result)
    assert [r.state for u, r in stored.items() if u != failed[0]["uuid"]] == ["PENDING"] * 2
    log = (tmp_path / "worker.log").read_text()
    assert "raised expected: StepFailed" in log  # a recorded end, not a crash
    assert "Retry in" not in log and "raised unexpected" not in log

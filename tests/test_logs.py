"""Structured logs: one JSON shape for our lines and the libraries', the
correlation ids on every line, secrets masked, and the ids carried from the
process that submits a job to the worker processes that run it."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from orchestrator.config.settings import Settings
from orchestrator.ops import logs
from orchestrator.run.sample_repos import create_sample_repos
from tests.cli_helpers import ROOT, cli, shape_env

EXAMPLE = ROOT / "orchestrator" / "examples" / "rename-function.yaml"


@pytest.fixture
def stream():
    """Logging set up to a buffer as JSON; the root logger as it was afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    buf = io.StringIO()
    logs.clear()  # ids an in-process runner test bound earlier in this process
    logs.configure(Settings(log_format="json", log_level="INFO"), stream=buf, force=True)
    yield buf
    logs.clear()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved:
        root.addHandler(h)
    root.setLevel(level)
    logs.clear()


def lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def test_our_lines_and_library_lines_carry_the_bound_ids(stream):
    logs.bind(job_id="J1", session_id="S1")
    with logs.bound(turn_id=3, tool_call_id="S1/3"):
        logs.get_logger("orchestrator.test").info("tool call", tool="read")
        logging.getLogger("kombu.test").warning("a library speaks %s", "plainly")
    logs.get_logger("orchestrator.test").info("after the call")
    ours, theirs, after = lines(stream.getvalue())
    assert ours["event"] == "tool call" and ours["tool"] == "read"
    assert {k: ours[k] for k in ("job_id", "session_id", "turn_id", "tool_call_id")} == {
        "job_id": "J1",
        "session_id": "S1",
        "turn_id": "3",
        "tool_call_id": "S1/3",
    }
    assert theirs["event"] == "a library speaks plainly" and theirs["logger"] == "kombu.test"
    assert theirs["tool_call_id"] == "S1/3" and theirs["level"] == "warning"
    assert "tool_call_id" not in after and after["session_id"] == "S1"


def test_secrets_are_masked_in_messages_fields_and_tracebacks(stream):
    token = "ghp_" + "a1B2c3D4" * 5
    log = logs.get_logger("orchestrator.test")
    log.info(f"calling with {token}", header={"authorization": f"Bearer {token}"})
    try:
        raise RuntimeError(f"the endpoint refused {token}")
    except RuntimeError:
        log.exception("model call failed")
    text = stream.getvalue()
    assert token not in text
    first, second = lines(text)
    assert first["event"] == "calling with ***"
    assert "RuntimeError: the endpoint refused ***" in second["exception"]


def test_console_format_is_for_people(stream):
    buf = io.StringIO()
    logs.configure(Settings(log_format="console"), stream=buf, force=True)
    logs.get_logger("orchestrator.test").info("job submitted", job_id="J9")
    text = buf.getvalue()
    assert "job submitted" in text and "J9" in text and not text.startswith("{")


@pytest.mark.slow
def test_a_jobs_ids_cross_from_the_submitting_cli_to_the_worker_processes(tmp_path: Path):
    create_sample_repos(tmp_path / "sample-repos", count=2)
    env = shape_env(tmp_path, ORCH_LOG_FORMAT="json", ORCH_LOG_LEVEL="DEBUG")
    result = cli(env, "run", str(EXAMPLE), "--base-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    submitter = lines(result.stderr)
    submitted = next(x for x in submitter if x["event"] == "job submitted")
    assert submitted["job_id"] == job["job_id"]
    assert sorted(submitted["sessions"]) == sorted(s["session_id"] for s in job["sessions"])
    published = {
        x["published_task_id"]: x["carried"] for x in submitter if x["event"] == "task published"
    }
    assert len(published) == 2  # the first step of each session's chain

    worker = lines((tmp_path / "state" / "worker.log").read_text())
    started = {x["task_id"]: x for x in worker if x["event"] == "task started"}
    for task_id, carried in published.items():
        line = started[task_id]  # the worker child that ran it says so
        assert line["job_id"] == job["job_id"] == carried["job_id"]
        assert line["session_id"] == carried["session_id"]
    # Every tool call's line names its job, session, turn, call and task.
    calls = [x for x in worker if x["event"] == "tool call"]
    assert len(calls) == 2 * 3 and all(x["outcome"] == "ok" for x in calls)
    for x in calls:
        assert x["job_id"] == job["job_id"]
        assert x["tool_call_id"] == f"{x['session_id']}/{x['turn_id']}"
        assert started[x["task_id"]]["session_id"] == x["session_id"]
    # Tasks the workers enqueued (the chains' next links) carried the ids on.
    later = {x["task_id"] for x in calls} - set(published)
    assert later and all(started[t]["job_id"] == job["job_id"] for t in later)

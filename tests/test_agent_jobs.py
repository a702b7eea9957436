"""Agent jobs end to end: a scripted model through a real worker, on both
deployment shapes, with the same policy, confirmations and audit as recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from events.projections import Projections
from events.replay import replay
from events.store import open_store
from orchestrator.agent.loop import AgentLoop
from orchestrator.agent.providers.base import ModelError, ModelReply, ModelRequest
from orchestrator.agent.providers.scripted import ScriptedProvider
from orchestrator.run.jobspec import AgentSpec
from orchestrator.run.runner import Runner, Ticket
from orchestrator.run.sample_repos import create_sample_repos
from tests.cli_helpers import ROOT, cli, cli_json, shape_env

EXAMPLE = ROOT / "orchestrator" / "examples" / "agent-rename.yaml"
SCRIPTS = Path(__file__).parent / "agent_scripts"

pytestmark = pytest.mark.slow


REDIS_DB = 13


@pytest.fixture
def env(deployment_env: dict[str, str]) -> dict[str, str]:
    return deployment_env


def _events(env: dict[str, str], session_id: str) -> list[dict]:
    return cli_json(env, "audit", "replay", session_id)


def test_the_agent_example_renames_runs_the_tests_and_replays(env, tmp_path: Path) -> None:
    repos = create_sample_repos(tmp_path / "sample-repos", count=2)
    result = cli(env, "run", str(EXAMPLE), "--base-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "completed"
    for session in job["sessions"]:
        assert session["status"] == "completed" and "load_user" in session["patch"]
        assert session["agent"]["model_turns"] == 4 and session["agent"]["tool_calls"] == 4
        assert "test suite passes" in session["agent"]["message"]
        replayed = _events(env, session["session_id"])
        assert replayed["session"]["agent"]["model"] == "scripted"
        assert replayed["quota"]["model_calls"] == 4 and replayed["quota"]["tokens_in"] > 0
        assert [e["tool"] for e in replayed["ledger"]["entries"]] == [
            "search",
            "replace",
            "search",
            "shell",
        ]
        assert all(e["decision"] == "allow" for e in replayed["ledger"]["entries"])
    for repo in repos:
        text = "".join(p.read_text() for p in repo.rglob("*.py"))
        assert "fetch_user" not in text
    for session in job["sessions"]:  # the PostgreSQL database is shared by the run
        assert cli_json(env, "audit", "verify", session["session_id"])["ok"]


def _agent_job(tmp_path: Path, script: str, **agent: object) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    (ws / "README.md").write_text("hello\n")
    (ws / ".env").write_text("TOKEN=hunter2-secret\n")
    (ws / "obsolete.txt").write_text("old\n")
    block = {
        "instruction": "tidy up",
        "provider": "scripted",
        "script": str(SCRIPTS / script),
        **agent,
    }
    spec = tmp_path / "job.yaml"
    spec.write_text(
        json.dumps({"name": "agent-test", "targets": [str(ws)], "tier": "exec", "agent": block})
    )
    return spec


def test_invalid_and_denied_calls_are_observations_the_model_recovers_from(tmp_path: Path) -> None:
    env = shape_env(tmp_path)
    spec = _agent_job(tmp_path, "corrects-itself.yaml", max_invalid_calls=5)
    result = cli(env, "run", str(spec), "--json")
    assert result.returncode == 0, result.stderr
    [session] = json.loads(result.stdout)["sessions"]
    assert session["agent"]["invalid_calls"] == 3
    replayed = _events(env, session["session_id"])
    entries = replayed["session"]["agent"]["entries"]
    errors = [c["error"] for c in entries[1]["calls"]]
    assert "there is no tool 'grep'" in errors[0] and "not valid JSON" in errors[1]
    ledger = replayed["ledger"]["entries"]
    assert [(e["tool"], e["decision"], e["rule_id"]) for e in ledger] == [
        ("read", "deny", "deny-secrets"),
        ("read", "allow", ledger[1]["rule_id"]),
    ]
    assert "hunter2" not in result.stdout + json.dumps(replayed)


def test_a_destructive_call_waits_for_approval_and_then_runs_exactly_that(tmp_path: Path) -> None:
    env = shape_env(tmp_path)
    spec = _agent_job(tmp_path, "deletes.yaml")
    first = cli(env, "run", str(spec), "--json")
    assert first.returncode == 3, first.stderr  # waiting
    [session] = json.loads(first.stdout)["sessions"]
    assert session["status"] == "waiting" and (tmp_path / "ws" / "obsolete.txt").exists()
    waiting = cli_json(env, "pending")
    assert [w["tool"] for w in waiting] == ["delete"]
    approved = cli(env, "approve", waiting[0]["call_id"], "--wait")
    assert approved.returncode == 0, approved.stderr
    assert not (tmp_path / "ws" / "obsolete.txt").exists()
    replayed = _events(env, session["session_id"])
    assert replayed["session"]["status"] == "completed"
    [entry] = replayed["ledger"]["entries"]
    assert (entry["decision"], entry["confirmation"]) == ("ask", "granted")


def test_max_turns_stops_the_session_with_what_to_raise(tmp_path: Path) -> None:
    env = shape_env(tmp_path)
    result = cli(env, "run", str(_agent_job(tmp_path, "loops.yaml", max_turns=2)), "--json")
    assert result.returncode == 1
    [session] = json.loads(result.stdout)["sessions"]
    assert session["status"] == "failed" and "MaxTurns" in session["error"]
    assert "agent.max_turns" in session["error"]


# --- resuming: a model call that failed mid-way is asked again, recorded once ---------


class FlakyOnce:
    """A provider whose first call fails as a 503 would, then answers."""

    name = "flaky"

    def __init__(self, inner: ScriptedProvider) -> None:
        self.inner, self.calls = inner, 0

    def complete(self, request: ModelRequest) -> ModelReply:
        self.calls += 1
        if self.calls == 1:
            raise ModelError("503 from the endpoint", error="ModelHTTP503", transient=True)
        return self.inner.complete(request)


def test_a_redelivered_model_turn_is_recorded_once(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("x\n")
    store = open_store(f"sqlite:///{tmp_path / 'events.sqlite'}", upgrade=True)
    provider = FlakyOnce(
        ScriptedProvider(
            [
                {"tool_calls": [{"name": "read", "arguments": {"path": "a.txt"}}]},
                {"content": "done"},
            ]
        )
    )
    spec = AgentSpec(instruction="read a.txt", provider="scripted")
    loop = AgentLoop(Runner(store, "worker:test"), lambda _: provider)
    ticket = Ticket(
        job_id="job",
        session_id="sess",
        target="ws",
        path=str(ws),
        steps=(),
        sessions_total=1,
        agent=spec.model_dump(mode="json"),
    )
    with pytest.raises(ModelError):
        loop.advance(ticket)  # the task would retry this
    outcomes = []
    while not outcomes or outcomes[-1] == "continue":
        outcomes.append(loop.advance(ticket))
    assert outcomes[-1] == "completed"
    state: Projections = replay(store, "sess")
    types = [e.type for e in store.read_stream("sess")]
    assert types.count("ModelRequested") == 2 and types.count("ModelResponded") == 2
    assert state.session.agent is not None and state.session.agent.model_turns == 2
    assert state.session.call("sess/1").output == "x\n"


# --- the openai provider, through a worker, against a real wire format ------------------


def test_an_agent_job_on_an_openai_compatible_endpoint(tmp_path: Path) -> None:
    """The SDK path for real: a 429 with Retry-After, then a tool call, then
    the answer; the key reaches the endpoint and nothing else."""
    from tests.fake_chat_server import FakeChatServer, Reply, error, tool_call

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "README.md").write_text("hello from the readme\n")
    spec = tmp_path / "job.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "agent-openai",
                "targets": [str(ws)],
                "tier": "read-only",
                "agent": {"instruction": "What does the README say?"},
            }
        )
    )
    with FakeChatServer() as server:
        server.push(
            error(429, "slow down", type="rate_limit_error", headers={"Retry-After": "0"}),
            Reply(
                content="Reading it.",
                cached_tokens=3,
                tool_calls=[tool_call("call_a", "read", {"path": "README.md"})],
            ),
            Reply(content="It says hello."),
        )
        env = shape_env(
            tmp_path,
            ORCH_MODEL_PROVIDER="openai",
            ORCH_MODEL_BASE_URL=server.url,
            ORCH_MODEL_NAME="fake-model",
            ORCH_MODEL_API_KEY="sk-test-key-123456",
        )
        result = cli(env, "run", str(spec), "--json")
        assert result.returncode == 0, result.stderr
        sent = server.requests
    [session] = json.loads(result.stdout)["sessions"]
    assert session["agent"]["message"] == "It says hello."
    assert len(sent) == 3 and all(
        r.headers.get("authorization") == "Bearer sk-test-key-123456" for r in sent
    )
    tools = {t["function"]["name"] for t in sent[1].body["tools"]}
    assert tools == {"read", "list", "search"}  # the read-only tier's tools
    assert sent[2].body["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_a",
        "content": "hello from the readme\n",
    }
    replayed = cli_json(env, "audit", "replay", session["session_id"])
    assert replayed["quota"]["tokens_cached"] == 3 and replayed["quota"]["model_calls"] == 2
    store_dump = cli(env, "audit", "export")
    assert "sk-test-key-123456" not in store_dump.stdout + result.stdout + result.stderr

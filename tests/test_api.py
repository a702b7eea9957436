"""The HTTP API: roles and tokens, input errors, and jobs run by a real worker
through a real uvicorn, on both deployment shapes (SQLite store + embedded
broker; PostgreSQL + Redis db 8)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from events.store import open_store
from orchestrator.api import create_app
from orchestrator.config.settings import Settings
from orchestrator.run.jobspec import parse_spec
from tests.api_helpers import TOKENS, api_env, api_server, auth, tokens_setting, wait_for, worker
from tests.cli_helpers import cli

REDIS_DB = 8
ALL = ("submitter", "operator", "auditor", "admin")


# -- in process: tokens, roles, input errors ---------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> dict[str, Any]:
    """An app on an embedded store with one recorded job (not enqueued)."""
    from orchestrator.run import jobs

    (tmp_path / "ws" / "repo").mkdir(parents=True)
    settings = Settings(
        _env_file=None,
        state_dir=tmp_path / "state",  # type: ignore[call-arg]
        api_tokens=json.loads(tokens_setting()),
        api_workspace_root=tmp_path / "ws",
        api_max_body_bytes=4096,
    )
    st = open_store(settings.effective_store_url, upgrade=True)
    spec = parse_spec("name: seeded\ntargets: [repo]\nsteps: [{kind: search, pattern: x}]\n")
    job_id, tickets = jobs.prepare(spec, tmp_path / "ws")
    jobs.record(st, spec, job_id, tickets, "user:test")
    st.close()
    with TestClient(create_app(settings)) as client:
        yield {"client": client, "job": job_id, "session": tickets[0].session_id}


BAD_SPEC = "name: x\ntargets: [repo]\nsteps: [{kind: serch}]\n"
# (method, path, body, the roles allowed); every other role gets 403.
ROUTES = [
    ("POST", "/jobs", BAD_SPEC, {"submitter", "admin"}),
    ("GET", "/jobs/{job}", None, {"submitter", "operator", "auditor", "admin"}),
    ("GET", "/jobs/{job}/patches", None, {"submitter", "operator", "auditor", "admin"}),
    ("POST", "/jobs/{job}/cancel", {"reason": "matrix"}, {"operator", "admin"}),
    ("GET", "/sessions/{session}", None, {"operator", "auditor", "admin"}),
    ("GET", "/sessions/{session}/events", None, {"operator", "auditor", "admin"}),
    ("GET", "/sessions/{session}/replay", None, {"operator", "auditor", "admin"}),
    ("GET", "/audit/verify", None, {"operator", "auditor", "admin"}),
    ("GET", "/audit/export", None, {"operator", "auditor", "admin"}),
    ("GET", "/confirmations", None, {"operator", "admin"}),
    ("POST", "/confirmations/nope/1", {"decision": "approve"}, {"operator", "admin"}),
    ("GET", "/metrics", None, {"submitter", "operator", "auditor", "admin"}),
]


def _call(
    client: TestClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    if isinstance(body, str):
        return client.request(
            method, path, content=body, headers={**headers, "Content-Type": "application/yaml"}
        )
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(
    "method,path,body,allowed", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES]
)
def test_each_role_is_allowed_or_refused_per_route(local, method, path, body, allowed):
    client = local["client"]
    url = path.format(job=local["job"], session=local["session"])
    for role in ALL:
        r = _call(client, method, url, body, auth(role))
        if role in allowed:
            assert r.status_code not in (401, 403), (role, r.text)
        else:
            assert r.status_code == 403, (role, r.text)
            assert r.json()["error"] == "Forbidden" and "api:" in r.json()["detail"]
    missing = _call(client, method, url, body, {})
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    wrong = _call(client, method, url, body, {"Authorization": "Bearer not-a-token-at-all"})
    assert wrong.status_code == 401
    assert TOKENS["admin"] not in wrong.text


def test_probes_need_no_token_and_liveness_does_no_io(local):
    assert local["client"].get("/healthz").json() == {"ok": True}
    ready = local["client"].get("/readyz")  # no worker runs here
    assert ready.status_code == 503
    assert "workers" in ready.json()["failed"]
    assert {c["name"] for c in ready.json()["checks"]} >= {"broker", "store", "workers"}


def test_a_bad_spec_is_422_with_each_field_and_reason(local):
    r = local["client"].post(
        "/jobs",
        content="name: x\ntargets: []\nsteps:\n  - kind: search\n    patern: x\n",
        headers={**auth("submitter"), "Content-Type": "application/yaml"},
    )
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "SpecError"
    fields = {p["field"]: p["reason"] for p in body["problems"]}
    assert "a job needs at least one target" in fields["targets"]
    assert "did you mean 'pattern'" in fields["steps[0].patern"]
    assert fields["steps[0].pattern"] == "Field required"
    assert all(p["at"].startswith("line ") for p in body["problems"])
    as_json = local["client"].post(
        "/jobs",
        json={"name": "x", "targets": ["repo"], "steps": [{"kind": "serch"}]},
        headers=auth("submitter"),
    )
    assert as_json.status_code == 422
    assert as_json.json()["problems"][0]["field"] == "steps[0].kind"
    assert "unknown step kind 'serch'" in as_json.json()["problems"][0]["reason"]


@pytest.mark.parametrize("target", ["../outside", "/etc", "~/repo", "repo/../../x"])
def test_targets_outside_the_workspace_root_are_refused(local, target):
    spec = {"name": "x", "targets": [target], "steps": [{"kind": "search", "pattern": "x"}]}
    r = local["client"].post("/jobs", json=spec, headers=auth("submitter"))
    assert r.status_code == 422, r.text
    assert r.json()["problems"][0]["field"] == "targets[0]"


def test_a_symlink_out_of_the_workspace_root_is_refused(local, tmp_path):
    (tmp_path / "ws" / "link").symlink_to(tmp_path / "state")
    spec = {"name": "x", "targets": ["link"], "steps": [{"kind": "search", "pattern": "x"}]}
    r = local["client"].post("/jobs", json=spec, headers=auth("submitter"))
    assert r.status_code == 422 and "symlink" in r.json()["problems"][0]["reason"]


def test_an_oversized_body_is_413_before_it_is_read(local):
    big = "name: x\n" + "#" * 10_000
    r = local["client"].post(
        "/jobs", content=big, headers={**auth("submitter"), "Content-Type": "application/yaml"}
    )
    assert r.status_code == 413 and r.json()["error"] == "BodyTooLarge"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b"#" * 1000

    r = local["client"].post(
        "/confirmations/x/1",
        content=chunks(),
        headers={**auth("operator"), "Content-Type": "application/json"},
    )
    assert r.status_code == 413


def test_unknown_ids_are_404_and_malformed_ones_422(local):
    c = local["client"]
    assert c.get("/jobs/0000-none", headers=auth("admin")).status_code == 404
    assert c.get("/sessions/0000-none", headers=auth("admin")).status_code == 404
    assert c.get("/sessions/0000-none/events", headers=auth("admin")).status_code == 404
    assert c.get("/sessions/0000-none/replay", headers=auth("admin")).status_code == 404
    assert c.post("/jobs/0000-none/cancel", headers=auth("admin")).status_code == 404
    bad = c.get("/jobs/%00%ff", headers=auth("admin"))
    assert bad.status_code == 422 and bad.json()["problems"][0]["field"] == "path.job_id"
    assert c.get("/sessions/x/events?limit=0", headers=auth("admin")).status_code == 422
    r = c.post("/confirmations/x/1", json={"decision": "maybe"}, headers=auth("operator"))
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "body.decision"


def test_the_openapi_spec_is_published_with_bearer_auth(local):
    spec = local["client"].get("/openapi.json").json()
    assert {
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/patches",
        "/jobs/{job_id}/cancel",
        "/sessions/{session_id}",
        "/sessions/{session_id}/events",
        "/sessions/{session_id}/replay",
        "/audit/verify",
        "/confirmations",
        "/confirmations/{call_id}",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert local["client"].get("/docs").status_code == 200


# -- through uvicorn and a real worker ------------------------------------------------


def _workspace(root: Path, names: tuple[str, ...] = ("alpha", "beta")) -> Path:
    for name in names:
        repo = root / name
        repo.mkdir(parents=True)
        (repo / "app.py").write_text("def fetch_user():\n    return 1\n\nfetch_user()\n")
        (repo / "notes.txt").write_text("scratch\n")
    return root


RENAME = {
    "name": "rename",
    "targets": ["*"],
    "steps": [
        {
            "kind": "replace",
            "name": "rename",
            "pattern": r"\bfetch_user\b",
            "replacement": "load_user",
            "glob": ["**/*.py"],
        },
        {"kind": "search", "name": "none-left", "pattern": r"\bfetch_user\b", "expect": 0},
    ],
}


@pytest.fixture
def served(deployment_env: dict[str, str], tmp_path: Path):
    env = api_env(deployment_env, _workspace(tmp_path / "ws"))
    with api_server(env, tmp_path / "api.log") as base:
        with httpx.Client(base_url=base, timeout=30) as client:
            yield {"client": client, "env": env, "tmp": tmp_path, "base": base}


def _job(client: httpx.Client, job_id: str, role: str = "submitter") -> dict[str, Any]:
    r = client.get(f"/jobs/{job_id}", headers=auth(role))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _done(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return wait_for(
        lambda: (j := _job(client, job_id))["status"] in ("completed", "failed", "cancelled") and j
    )


@pytest.mark.slow
def test_a_submitted_job_runs_on_a_worker_and_its_log_verifies(served):
    c, tmp = served["client"], served["tmp"]
    r = c.post("/jobs", json=RENAME, headers=auth("submitter"))
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    sessions = [s["session_id"] for s in r.json()["sessions"]]
    assert [s["target"] for s in r.json()["sessions"]] == ["alpha", "beta"]
    # Follow one session live: the stream is open before any worker runs.
    got: list[str] = []

    def follow() -> None:
        with httpx.stream(
            "GET",
            f"{served['base']}/sessions/{sessions[0]}/events",
            headers={**auth("auditor"), "Accept": "text/event-stream"},
            timeout=120,
        ) as s:
            for line in s.iter_lines():
                if line.startswith("event: "):
                    got.append(line[7:])
                if line == "event: end":
                    return

    reader = threading.Thread(target=follow)
    reader.start()
    with worker(served["env"], tmp / "worker.log"):
        job = _done(c, job_id)
        reader.join(60)
    assert not reader.is_alive()
    assert job["status"] == "completed", job
    assert got[0] == "SessionStarted" and got[-2:] == ["SessionCompleted", "end"]
    patches = c.get(f"/jobs/{job_id}/patches", headers=auth("submitter")).json()["patches"]
    assert all("+load_user()" in p["patch"] for p in patches)
    assert "load_user" in (tmp / "ws" / "beta" / "app.py").read_text()
    # The whole stream, a page of 3 at a time, equals what SSE delivered.
    seen, after = [], 0
    while True:
        page = c.get(
            f"/sessions/{sessions[0]}/events",
            params={"after_seq": after, "limit": 3},
            headers=auth("auditor"),
        ).json()
        seen += page["events"]
        after = page["next_after_seq"]
        if not page["more"]:
            break
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
    assert [e["type"] for e in seen] == got[:-1] and page["finished"]
    replay = c.get(f"/sessions/{sessions[0]}/replay", headers=auth("auditor")).json()
    assert replay["session"]["status"] == "completed"
    assert replay["session"]["patch"] == patches[0]["patch"]
    verified = c.get("/audit/verify", headers=auth("auditor")).json()
    assert verified["ok"] and verified["events"] >= len(seen) and verified["problems"] == []
    exported = c.get("/audit/export", params={"stream": job_id}, headers=auth("auditor"))
    first = json.loads(exported.text.splitlines()[0])
    assert first["type"] == "JobSubmitted" and first["actor"] == "api:sub"


@pytest.mark.slow
def test_cancel_stops_a_job_and_its_running_step(served):
    c, tmp = served["client"], served["tmp"]
    spec = {
        "name": "slow",
        "targets": ["alpha"],
        "tier": "exec",
        "steps": [
            {"kind": "shell", "name": "nap", "command": "sleep 120"},
            {"kind": "search", "name": "after", "pattern": "x"},
        ],
    }
    queued = c.post("/jobs", json={**spec, "targets": ["beta"]}, headers=auth("submitter")).json()
    # Cancelled (with the CLI) before any worker ran it: no step starts.
    stopped = cli(served["env"], "cancel", queued["job_id"], "--reason", "wrong target")
    assert stopped.returncode == 0, stopped.stderr
    again = c.post(
        f"/jobs/{queued['job_id']}/cancel", json={"reason": "twice"}, headers=auth("admin")
    ).json()
    assert not again["first_request"] and again["reason"] == "wrong target"
    assert again["cancelled_by"].startswith("user:")
    running = c.post("/jobs", json=spec, headers=auth("submitter")).json()
    sid = running["sessions"][0]["session_id"]
    with worker(served["env"], tmp / "worker.log"):
        wait_for(
            lambda: any(
                e["type"] == "ToolCallStarted"
                for e in c.get(f"/sessions/{sid}/events", headers=auth("auditor")).json()["events"]
            )
        )
        r = c.post(
            f"/jobs/{running['job_id']}/cancel", json={"reason": "enough"}, headers=auth("operator")
        )
        assert r.status_code == 200, r.text
        assert r.json()["cancelled_by"] == "api:ope" and r.json()["first_request"]
        assert r.json()["running"] == [sid]
        first, second = _done(c, queued["job_id"]), _done(c, running["job_id"])
    assert first["status"] == "cancelled"
    assert first["cancel"]["reason"] == "wrong target"
    error = first["sessions"][0]["error"]
    assert error.startswith("JobCancelled: cancelled by user:") and error.endswith(": wrong target")
    assert first["sessions"][0]["steps_ok"] == 0
    # The step that was running was stopped (its command killed, recorded);
    # the next one never started.
    assert (second["status"], second["cancel"]) == (
        "cancelled",
        {"by": "api:ope", "reason": "enough"},
    )
    error = second["sessions"][0]["error"]
    assert error.startswith("JobCancelled: step 1 (nap) failed: command `sleep 120` was stopped")
    assert "its job was cancelled by api:ope: enough" in error
    assert second["sessions"][0]["steps_ok"] == 0
    events = c.get(f"/sessions/{sid}/events", headers=auth("auditor")).json()["events"]
    assert [e["payload"]["turn"] for e in events if e["type"] == "TurnStarted"] == [1]
    assert events[-1]["actor"].startswith("worker:")
    late = c.post(f"/jobs/{running['job_id']}/cancel", headers=auth("operator"))
    assert late.status_code == 409 and "already cancelled" in late.json()["detail"]


DELETE = {
    "name": "tidy",
    "targets": ["alpha"],
    "steps": [
        {"kind": "delete", "name": "drop-notes", "path": "notes.txt"},
        {"kind": "search", "name": "after", "pattern": "fetch_user"},
    ],
}


@pytest.mark.slow
def test_approving_a_confirmation_through_the_api_continues_the_session(served):
    c, tmp = served["client"], served["tmp"]
    job = c.post("/jobs", json=DELETE, headers=auth("submitter")).json()
    waiting_job = c.post(
        "/jobs", json={**DELETE, "targets": ["beta"]}, headers=auth("submitter")
    ).json()
    with worker(served["env"], tmp / "worker.log"):
        pending = wait_for(
            lambda: len(w := c.get("/confirmations", headers=auth("operator")).json()) == 2 and w
        )
        mine = next(w for w in pending if w["job_id"] == job["job_id"])
        assert mine["tool"] == "delete" and mine["call_id"].endswith("/1")
        r = c.post(
            f"/confirmations/{mine['call_id']}",
            json={"decision": "approve", "reason": "scratch file"},
            headers=auth("operator"),
        )
        assert r.status_code == 200, r.text
        assert r.json()["continues_from"] == "step 1" and r.json()["by"] == "api:ope"
        again = c.post(
            f"/confirmations/{mine['call_id']}", json={"decision": "deny"}, headers=auth("operator")
        )
        assert again.status_code == 404  # answered: nothing waits any more
        done = _done(c, job["job_id"])
        # A job that waits for a confirmation is cancelled at once.
        cancelled = c.post(
            f"/jobs/{waiting_job['job_id']}/cancel", json={"reason": "no"}, headers=auth("operator")
        ).json()
        assert cancelled["stopped"] == [waiting_job["sessions"][0]["session_id"]]
        other = _done(c, waiting_job["job_id"])
    assert done["status"] == "completed", done
    assert not (tmp / "ws" / "alpha" / "notes.txt").exists()
    assert (tmp / "ws" / "beta" / "notes.txt").exists()
    assert other["sessions"][0]["error"] == "JobCancelled: cancelled by api:ope: no"
    assert c.get("/confirmations", headers=auth("operator")).json() == []
    sid = job["sessions"][0]["session_id"]
    replay = c.get(f"/sessions/{sid}/replay", headers=auth("auditor")).json()
    assert replay["ledger"]["entries"][0]["confirmed_by"] == "api:ope"


@pytest.mark.slow
def test_readiness_turns_ready_once_a_worker_beats(tmp_path: Path):
    from tests.cli_helpers import shape_env

    env = api_env(shape_env(tmp_path), _workspace(tmp_path / "ws"))
    with api_server(env, tmp_path / "api.log") as base:
        before = httpx.get(base + "/readyz")
        assert before.status_code == 503 and before.json()["failed"] == ["workers"]
        with worker(env, tmp_path / "worker.log"):
            ready = wait_for(
                lambda: (r := httpx.get(base + "/readyz")).status_code == 200 and r,
                timeout=60,
                every=0.3,
            )
        assert ready.json()["ok"] and ready.json()["failed"] == []


def test_a_token_can_come_from_the_secret_store(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ORCH_SECRET_API_OPS_TOKEN", "ops-token-from-the-secret-store")
    settings = Settings(
        _env_file=None,
        state_dir=tmp_path / "state",  # type: ignore[call-arg]
        api_tokens=[{"principal": "ops", "roles": ["operator"], "secret": "api_ops_token"}],
    )
    with TestClient(create_app(settings)) as client:
        ok = client.get(
            "/confirmations", headers={"Authorization": "Bearer ops-token-from-the-secret-store"}
        )
        assert ok.status_code == 200 and ok.json() == []
        assert client.get("/confirmations", headers=auth("operator")).status_code == 401
    st = open_store(settings.effective_store_url)
    [read] = [e for e in st.read_all() if e.type == "SecretAccessed"]
    assert read.payload.name == "api_ops_token" and read.payload.reader == "api:token:ops"


def test_a_token_naming_a_missing_secret_fails_at_start(tmp_path: Path):
    from orchestrator.errors import ConfigError

    settings = Settings(
        _env_file=None,
        state_dir=tmp_path / "state",  # type: ignore[call-arg]
        api_tokens=[{"principal": "ops", "roles": ["operator"], "secret": "no_such_secret_here"}],
    )
    with pytest.raises(ConfigError, match="no entry 'no_such_secret_here'"):
        create_app(settings)


@pytest.mark.parametrize(
    "body,kind",
    [("name: a\x89b\n", "application/yaml"), ('{"name": "a\\u0089b"}', "application/json")],
)
def test_a_character_yaml_does_not_allow_is_a_422_not_a_crash(local, body, kind):
    r = local["client"].post(
        "/jobs", content=body.encode(), headers={**auth("submitter"), "Content-Type": kind}
    )
    assert r.status_code == 422, r.text
    assert "unacceptable character #x0089" in r.json()["problems"][0]["reason"]


def test_every_error_type_has_its_status_code():
    """A new error class must be placed here (and in problems.status_of) on purpose."""
    import events.errors as ee
    import orchestrator.errors as oe
    from orchestrator.api.problems import status_of

    expected = {
        "UserError": 400,
        "SpecError": 422,
        "ConfigError": 400,
        "NotFound": 404,
        "Conflict": 409,
        "PolicyDenied": 403,
        "InfraUnavailable": 503,
        "OrchestratorError": 500,
        "ToolError": 500,
        "ToolInputError": 500,
        "ToolTimeout": 500,
        "ResourceExceeded": 500,  # a tool's outcome, recorded; never an API answer
        "JobCancelled": 500,  # the same
        "CountMismatch": 500,
        "EventError": 500,
        "SequenceConflict": 409,
        "UnknownEvent": 500,
        "StoreUnavailable": 503,
        "SchemaNotReady": 503,
        "UnknownSchemaRevision": 503,
        "AppendOnlyViolation": 500,
    }
    found = {
        name: status_of(cls.__new__(cls))
        for mod in (oe, ee)
        for name, cls in vars(mod).items()
        if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == mod.__name__
    }
    assert found == expected


def test_metrics_can_be_opened_to_a_scraper(tmp_path: Path):
    closed = Settings(_env_file=None, state_dir=tmp_path / "a")  # type: ignore[call-arg]
    public = Settings(
        _env_file=None,
        state_dir=tmp_path / "b",  # type: ignore[call-arg]
        api_metrics_public=True,
    )
    with TestClient(create_app(closed)) as c:
        assert c.get("/metrics").status_code == 401
    with TestClient(create_app(public)) as c:
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")

"""`orchestrator doctor`: the installation's checks, run by the real CLI on
real configurations (a healthy embedded one, a PostgreSQL database that does
not exist with a Redis port nobody listens on, invalid settings, and a
migrated PostgreSQL store with a real Redis broker), the model
endpoint check against a real local HTTP server, and the pure parts.
Every JSON report is validated against docs/schemas/doctor.schema.json
with every object closed; the healthy one is pinned as a snapshot."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import SecretStr

from orchestrator.config.settings import Settings
from orchestrator.ops import doctor
from orchestrator.sandbox.runtime import describe, probe
from tests.cli_helpers import ROOT, cli, shape_env
from tests.conftest import redis_db_url
from tests.test_diagnose import closed

REDIS_DB = 6
SCHEMA = json.loads((ROOT / "docs" / "schemas" / "doctor.schema.json").read_text())
NAMES = [
    "config",
    "policy-file",
    "store",
    "broker",
    "worker",
    "sandbox",
    "chromium",
    "model-endpoint",
    "model-script",
    "secret-sources",
]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The CLI on each configuration, side by side."""
    tmp = tmp_path_factory.mktemp("doctor")
    missing_db = f"orch_no_such_db_{uuid.uuid4().hex[:8]}"
    envs = {
        "healthy": shape_env(tmp / "healthy"),
        "text": shape_env(tmp / "text"),
        # Both services down at once: each check says so on its own.
        "down": shape_env(
            tmp / "down",
            store_url=f"postgresql://postgres@127.0.0.1:5432/{missing_db}",
            broker_url=f"redis://127.0.0.1:{_closed_port()}/0",
        ),
        "invalid": shape_env(tmp / "invalid", ORCH_WORKER_CONCURRENCY="0"),
    }
    args = {name: ("doctor",) if name == "text" else ("doctor", "--json") for name in envs}
    with ThreadPoolExecutor(len(envs)) as pool:
        done = dict(zip(envs, pool.map(lambda n: cli(envs[n], *args[n], timeout=120), envs)))
    return {"done": done, "tmp": tmp, "missing_db": missing_db}


def report_of(runs: dict[str, Any], name: str, code: int) -> dict[str, Any]:
    done = runs["done"][name]
    assert done.returncode == code, (done.stdout, done.stderr)
    data = json.loads(done.stdout)
    Draft202012Validator.check_schema(SCHEMA)
    errors = list(Draft202012Validator(closed(SCHEMA)).iter_errors(data))
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    assert data["exit_code"] == code and data["ok"] is (code == 0)
    return data


def checks(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert [c["name"] for c in data["checks"]] == NAMES
    return {c["name"]: c for c in data["checks"]}


def test_a_healthy_embedded_installation_passes_and_doctor_creates_nothing(runs, snapshot) -> None:
    data = report_of(runs, "healthy", 0)
    by = checks(data)
    assert by["store"]["status"] == by["broker"]["status"] == by["config"]["status"] == "ok"
    assert "not created yet" in by["store"]["detail"]
    assert by["worker"]["status"] == "warn" and not by["worker"]["required"]
    assert by["model-endpoint"]["status"] == "skip"
    assert data["sandbox"] == json.loads(json.dumps(describe(probe())))
    assert not (runs["tmp"] / "healthy" / "state").exists()
    host = {"sandbox", "chromium"}  # what this machine has
    assert [
        (c["name"], "<host>" if c["name"] in host else c["status"], c["required"])
        for c in data["checks"]
    ] == snapshot


def test_a_store_database_that_does_not_exist_fails_with_exit_4_and_a_remedy(runs) -> None:
    by = checks(report_of(runs, "down", 4))
    store = by["store"]
    assert store["status"] == "fail" and store["required"] and store["remedy"]
    assert "cannot connect" in store["detail"]
    if "does not exist" in store["detail"]:  # the server runs; the database does not
        assert runs["missing_db"] in store["detail"] and "createdb" in store["remedy"]


def test_a_redis_broker_on_a_closed_port_fails_with_exit_4_and_the_worker_is_not_asked(
    runs,
) -> None:
    by = checks(report_of(runs, "down", 4))
    assert by["broker"]["status"] == "fail" and "PING" in by["broker"]["detail"]
    assert "ORCH_BROKER_URL" in by["broker"]["remedy"]
    assert by["worker"]["status"] == "skip"


def test_invalid_settings_exit_2_and_skip_what_needs_them(runs) -> None:
    by = checks(report_of(runs, "invalid", 2))
    assert by["config"]["status"] == "fail"
    assert "ORCH_WORKER_CONCURRENCY" in by["config"]["detail"]
    assert {
        by[n]["status"]
        for n in ("policy-file", "store", "broker", "worker", "model-endpoint", "model-script")
    } == {"skip"}


def test_the_text_report_lists_the_checks_and_keeps_the_sandbox_details(runs) -> None:
    done = runs["done"]["text"]
    assert done.returncode == 0, done.stderr
    for name in NAMES:
        assert name in done.stdout
    assert ("sandbox: bubblewrap" if probe().bwrap else "sandbox: fallback") in done.stdout
    assert "does not protect against:" in done.stdout
    assert "all required checks pass" in done.stdout


# -- the model endpoint, against a real HTTP server --------------------------------------


class _Models(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("Authorization") != "Bearer sk-right-key":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"object": "list", "data": [{"id": "qwen2.5-coder"}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def endpoint() -> Any:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _openai(base_url: str, key: str, model: str = "qwen2.5-coder") -> Settings:
    return Settings(
        model_provider="openai",
        model_base_url=base_url,
        model_name=model,
        model_api_key=SecretStr(key),
    )


def test_the_model_endpoint_lists_the_configured_model(endpoint) -> None:
    found = doctor.check_model_endpoint(_openai(endpoint, "sk-right-key"))
    assert (found.status, found.required) == ("ok", True)
    assert "'qwen2.5-coder' among them" in found.detail
    other = doctor.check_model_endpoint(_openai(endpoint, "sk-right-key", model="gpt-9"))
    assert other.status == "warn" and "ORCH_MODEL_NAME" in other.remedy


def test_a_refused_key_fails_with_exit_2_and_the_key_is_never_shown(endpoint) -> None:
    found = doctor.check_model_endpoint(_openai(endpoint, "sk-wrong-secret"))
    assert (found.status, found.exit_code) == ("fail", 2)
    assert "refused the key" in found.detail
    assert "sk-wrong-secret" not in json.dumps(found.to_json())


def test_an_endpoint_nobody_listens_on_fails_with_exit_4() -> None:
    found = doctor.check_model_endpoint(_openai(f"http://127.0.0.1:{_closed_port()}/v1", "k"))
    assert (found.status, found.exit_code) == ("fail", 4) and "cannot connect" in found.detail


# -- pure parts ---------------------------------------------------------------------------


def test_chromium_is_looked_for_on_path_then_in_its_usual_place() -> None:
    def none(_: str) -> str | None:
        return None

    assert doctor.check_chromium(none, lambda p: False).status == "warn"
    assert doctor.check_chromium(none, lambda p: p == "/usr/bin/chromium").detail.startswith(
        "found at /usr/bin/chromium"
    )
    on_path = doctor.check_chromium(lambda n: f"/opt/bin/{n}" if n == "chromium" else None)
    assert (on_path.status, on_path.detail.split(" (")[0]) == ("ok", "found at /opt/bin/chromium")


def test_the_first_required_failure_decides_the_exit_code() -> None:
    R = doctor.Result
    assert (
        doctor.exit_code(
            [R("config", "fail", True, "", "", 2), R("store", "fail", True, "", "", 4)]
        )
        == 2
    )
    assert (
        doctor.exit_code([R("worker", "fail", False, "", "", 4), R("store", "warn", True, "")]) == 0
    )
    assert doctor.exit_code([R("store", "fail", True, "", "", 4)]) == 4


def test_passwords_in_service_urls_are_hidden() -> None:
    assert (
        doctor._hide("redis://:s3cret@redis.internal:6380/0")
        == "redis://:***@redis.internal:6380/0"
    )
    assert doctor._hide("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_a_missing_state_folder_that_can_be_created_is_fine(tmp_path: Path) -> None:
    found = doctor.check_broker(Settings(state_dir=tmp_path / "new" / "state"))
    assert found.status == "ok" and "created by the first job" in found.detail


@pytest.mark.postgres
@pytest.mark.redis
def test_a_migrated_postgresql_store_and_a_redis_broker_pass_and_a_missing_worker_warns(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    broker = redis_db_url(REDIS_DB)
    done = cli(shape_env(tmp_path, store_url=pg_url, broker_url=broker), "doctor", "--json")
    assert done.returncode == 0, done.stderr
    by = checks(json.loads(done.stdout))
    assert by["store"]["status"] == "ok" and "(current)" in by["store"]["detail"]
    # The shared Redis may run without AOF: reachable, and a warning saying so.
    assert by["broker"]["status"] in ("ok", "warn") and by["broker"]["required"]
    assert by["broker"]["detail"].startswith(f"{broker}: reachable")
    if by["broker"]["status"] == "warn":
        assert "appendonly" in by["broker"]["detail"] and "resume" in by["broker"]["remedy"]
    assert by["worker"]["status"] == "warn" and "no worker answered" in by["worker"]["detail"]


def test_chromium_without_playwrights_package_is_a_warning_naming_the_extra() -> None:
    found = doctor.check_chromium(lambda n: "/usr/bin/chromium", installed=lambda m: False)
    assert found.status == "warn"
    assert "playwright is not installed" in found.detail
    assert "agent-orchestrator[browser]" in found.remedy


def test_a_secret_source_whose_package_is_missing_fails_with_exit_2(tmp_path: Path) -> None:
    s = Settings(state_dir=tmp_path, secret_sources=("env", "vault"))
    missing = doctor.check_secret_sources(s, present=lambda m: m != "hvac")
    assert (missing.status, missing.required, missing.exit_code) == ("fail", True, 2)
    assert "hvac" in missing.detail and "agent-orchestrator[vault]" in missing.remedy
    assert doctor.check_secret_sources(s, present=lambda m: True).status == "ok"
    plain = Settings(state_dir=tmp_path, secret_sources=("env", "file"))
    assert doctor.check_secret_sources(plain, present=lambda m: False).status == "ok"

"""The container image, the compose stack and the systemd units, validated
without an engine: `docker-compose config` (Debian's docker-compose 1.29)
resolves the stack, then the resolved file is checked the way an operator
would review it. Every ORCH_ variable any deployment file names must be a
real setting, and every `orchestrator` command it runs a real command.

docker-compose missing is a skip locally and a failure under
ORCH_REQUIRE_SERVICES=1 (CI installs it: `apt-get install -y docker-compose`).
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from orchestrator.config.settings import Settings
from tests.conftest import REQUIRE

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"
SYSTEMD = COMPOSE / "systemd"
HELM = ROOT / "helm"
LONG_RUNNING = {"api", "worker-1", "worker-2", "flower"}
ORCH_VAR = re.compile(r"\bORCH_[A-Z0-9_]*[A-Z0-9]\b")
# Read by orchestrator/config/settings.py itself (the TOML file), not a field.
NOT_FIELDS = {"ORCH_CONFIG"}


# -- shared with tests/test_helm_chart.py ----------------------------------


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def settings_env_names() -> set[str]:
    """Every environment name Settings reads: ORCH_FIELD, and ORCH_FIELD__SUB
    for fields that are models (env_nested_delimiter="__")."""
    names = set(NOT_FIELDS)
    for name, field in Settings.model_fields.items():
        names.add(f"ORCH_{name.upper()}")
        model = _nested_model(field.annotation)
        if model is not None:
            names.update(f"ORCH_{name.upper()}__{sub.upper()}" for sub in model.model_fields)
    return names


def unknown_orch_vars(paths: list[Path]) -> dict[str, list[str]]:
    known = settings_env_names()
    found: dict[str, list[str]] = {}
    for path in paths:
        for var in sorted(set(ORCH_VAR.findall(path.read_text(encoding="utf-8")))):
            if var not in known:
                found.setdefault(var, []).append(str(path.relative_to(ROOT)))
    return found


def cli_commands() -> dict[tuple[str, ...], set[str]]:
    """{('worker',): {'--concurrency', ...}, ('db', 'upgrade'): ..., ...}: every
    command path of the CLI with the options it takes."""
    import typer

    from orchestrator.cli.main import app

    paths: dict[tuple[str, ...], set[str]] = {}

    def walk(cmd: Any, prefix: tuple[str, ...]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            paths[(*prefix, name)] = {o for p in sub.params for o in getattr(p, "opts", ())}
            walk(sub, (*prefix, name))

    walk(typer.main.get_command(app), ())
    return paths


def missing_commands(argvs: list[list[str]]) -> list[str]:
    """The argvs whose command, or one of whose --options, the CLI lacks."""
    commands = cli_commands()
    missing = []
    for argv in argvs:
        assert argv[0] == "orchestrator", argv
        words = tuple(w for w in argv[1:3] if not w.startswith("-"))
        path = next((words[:n] for n in (2, 1) if len(words) >= n and words[:n] in commands), None)
        flags = {w.split("=", 1)[0] for w in argv if w.startswith("--")}
        if path is None or not flags <= commands[path]:
            missing.append(" ".join(argv))
    return missing


def deployment_files() -> list[Path]:
    files = [ROOT / "Dockerfile", ROOT / "docs" / "deployment.md"]
    for base in (COMPOSE, HELM):
        files += [p for p in base.rglob("*") if p.is_file() and "secrets" not in p.parts]
    return [p for p in files if p.exists()]


# -- the compose stack -----------------------------------------------------


def docker_compose() -> list[str]:
    exe = shutil.which("docker-compose")
    if exe:
        return [exe]
    msg = "docker-compose is not installed (apt-get install -y docker-compose)"
    if REQUIRE:
        pytest.fail(msg + " -- required because ORCH_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(msg)


def compose_config(*files: str) -> dict[str, Any]:
    args = [*docker_compose(), "--env-file", str(COMPOSE / ".env.example")]
    for f in files:
        args += ["-f", str(COMPOSE / f)]
    quiet = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, cwd=COMPOSE)
    assert quiet.returncode == 0, quiet.stderr
    full = subprocess.run(
        [*args, "config"], capture_output=True, text=True, cwd=COMPOSE, check=True
    )
    return yaml.safe_load(full.stdout)


def secret_names(svc: dict[str, Any]) -> set[str]:
    return {r if isinstance(r, str) else r["source"] for r in svc.get("secrets", [])}


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return compose_config("docker-compose.yml")


def test_the_stack_has_every_service_of_a_production_like_deployment(stack):
    assert set(stack["services"]) == {
        "redis",
        "postgres",
        "migrate",
        "api",
        "worker-1",
        "worker-2",
        "flower",
        "otel-collector",
        "blackbox",
        "prometheus",
    }


def test_every_service_has_a_health_check_and_a_restart_policy(stack):
    for name, svc in stack["services"].items():
        assert svc.get("restart") in {"always", "unless-stopped", "on-failure"}, name
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if name == "migrate":
            # A one-shot: its exit status is what the others wait for.
            assert check.get("disable") is True or check.get("test") == ["NONE"]
        else:
            assert check["test"][0] in {"CMD", "CMD-SHELL"} and len(check["test"]) > 1, name


def test_api_workers_and_flower_start_only_after_the_migration_completed(stack):
    for name in LONG_RUNNING:
        deps = stack["services"][name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy"
    assert stack["services"]["migrate"]["command"] == ["orchestrator", "db", "upgrade"]


def test_health_checks_ask_the_services_own_endpoints(stack):
    svcs = stack["services"]
    assert svcs["api"]["healthcheck"]["test"][-1] == "http://127.0.0.1:8000/healthz"
    assert svcs["flower"]["healthcheck"]["test"][-1] == "http://127.0.0.1:5555/healthcheck"
    for w in ("worker-1", "worker-2"):
        port = svcs[w]["environment"]["ORCH_WORKER_PROBE_PORT"]
        assert svcs[w]["healthcheck"]["test"][-1] == f"http://127.0.0.1:{port}/healthz"


def test_secrets_are_files_mounted_at_run_secrets_and_never_inline(stack):
    declared = stack["secrets"]
    for name, spec in declared.items():
        assert set(spec) == {"file"}, name
        assert Path(spec["file"]).parent == COMPOSE / "secrets", name
    for name, svc in stack["services"].items():
        assert secret_names(svc) <= set(declared), name
        for key, value in (svc.get("environment") or {}).items():
            value = str(value)
            assert not re.search(r"://[^/@\s]*:[^/@\s]+@", value), f"{name}: {key} has a password"
            if re.search(r"PASSWORD|SECRET|TOKEN|API_KEY|BASIC_AUTH", key):
                if key == "ORCH_API_TOKENS":  # by reference: names of secret files
                    tokens = json.loads(value)
                    assert all(set(t) <= {"principal", "roles", "secret"} for t in tokens)
                    assert {t["secret"] for t in tokens} <= secret_names(svc)
                elif key not in ("ORCH_SECRET_SOURCES", "ORCH_SECRETS_DIR"):
                    assert value.startswith("/run/secrets/") and key.endswith("_FILE"), (
                        f"{name}: {key}={value!r} looks like an inline secret"
                    )
    # What the services read from /run/secrets is mounted where they read it.
    for name in ("api", "worker-1", "worker-2", "flower", "migrate"):
        assert "store_url" in secret_names(stack["services"][name])
    for w in ("worker-1", "worker-2"):
        assert "model_api_key" in secret_names(stack["services"][w])
    assert "flower_basic_auth" in secret_names(stack["services"]["flower"])
    assert (COMPOSE / "secrets" / ".gitignore").read_text().splitlines()[-2:] == [
        "*",
        "!.gitignore",
    ]


def test_each_services_environment_is_a_valid_configuration(stack, monkeypatch):
    for name in ("migrate", *sorted(LONG_RUNNING)):
        with monkeypatch.context() as m:
            for var in [v for v in __import__("os").environ if v.startswith("ORCH_")]:
                m.delenv(var)
            for key, value in stack["services"][name]["environment"].items():
                if key.startswith("ORCH_"):
                    m.setenv(key, str(value))
            Settings(_env_file=None)  # raises, listing every problem, when invalid


def test_app_containers_run_read_only_without_capabilities(stack):
    for name in ("migrate", *LONG_RUNNING):
        svc = stack["services"][name]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert any(t.startswith("/tmp") for t in svc["tmpfs"]), name
        mounts = {
            v["target"] if isinstance(v, dict) else v.split(":")[1] for v in svc.get("volumes", [])
        }
        assert "/var/lib/orchestrator" in mounts, name
    assert "seccomp=unconfined" not in stack["services"]["worker-1"]["security_opt"]


def test_the_bubblewrap_override_lifts_only_what_bubblewrap_needs_for_the_workers():
    stack = compose_config("docker-compose.yml", "docker-compose.bwrap.yml")
    for name, svc in stack["services"].items():
        opts = set(svc.get("security_opt", []))
        if name in ("worker-1", "worker-2"):
            assert {
                "seccomp=unconfined",
                "apparmor=unconfined",
                "systempaths=unconfined",
                "no-new-privileges:true",
            } <= opts
            assert svc["environment"]["ORCHESTRATOR_SANDBOX"] == "bwrap"
            assert svc["cap_drop"] == ["ALL"]
        else:
            assert "seccomp=unconfined" not in opts, name


def test_prometheus_scrapes_the_api_and_every_workers_probe_port(stack):
    prom = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    api = jobs["orchestrator-api"]
    assert api["metrics_path"] == "/metrics"
    assert api["static_configs"][0]["targets"] == ["api:8000"]
    token = Path(api["authorization"]["credentials_file"]).name
    assert token in secret_names(stack["services"]["prometheus"])
    workers = jobs["orchestrator-workers"]
    expected = sorted(
        f"{w}:{stack['services'][w]['environment']['ORCH_WORKER_PROBE_PORT']}"
        for w in ("worker-1", "worker-2")
    )
    assert workers["metrics_path"] == "/metrics"
    assert sorted(workers["static_configs"][0]["targets"]) == expected
    ready = jobs["orchestrator-readyz"]["static_configs"][0]["targets"]
    assert sorted(ready) == sorted(
        ["http://api:8000/readyz"] + [f"http://{t}/readyz" for t in expected]
    )
    mounted = {
        v["target"] if isinstance(v, dict) else v.split(":")[1]
        for v in stack["services"]["prometheus"]["volumes"]
    }
    assert set(prom["rule_files"]) <= mounted


def _metric_names() -> set[str]:
    from orchestrator.ops import metrics

    names: set[str] = set()
    for m in (*metrics.METRICS.values(), *metrics.SCRAPED.values()):
        base = m.name.removesuffix("_total") if m.kind == "counter" else m.name
        names.add(m.name)
        if m.kind == "histogram":
            names.update(f"{m.name}_{s}" for s in ("bucket", "count", "sum"))
        if m.kind == "counter":
            names.update({f"{base}_total", f"{base}_created"})
    return names


def test_alert_rules_are_well_formed_and_use_metrics_the_service_exports():
    path = COMPOSE / "prometheus" / "alerts.yml"
    doc = yaml.safe_load(path.read_text())
    known = _metric_names()
    seen: set[str] = set()
    for group in doc["groups"]:
        assert set(group) <= {"name", "rules", "interval"} and group["rules"], group.get("name")
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] not in seen, rule["alert"]
            seen.add(rule["alert"])
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
            for metric in re.findall(r"\borch_[a-z_]+", rule["expr"]):
                assert metric in known, f"{rule['alert']}: {metric} is not exported"
    assert {
        "OrchestratorWorkerDown",
        "OrchestratorNoWorkers",
        "OrchestratorReadinessFailing",
        "OrchestratorQueueGrowing",
        "OrchestratorConfirmationsWaiting",
        "OrchestratorToolErrorRate",
        "OrchestratorBreakerOpen",
    } <= seen
    promtool = shutil.which("promtool")
    if promtool:
        run = subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stdout + run.stderr


def test_the_collector_pipelines_use_only_components_it_defines():
    cfg = yaml.safe_load((COMPOSE / "otel" / "collector.yaml").read_text())
    for pipeline in cfg["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(kind, [])) <= set(cfg.get(kind, {})), kind
    assert set(cfg["service"]["extensions"]) <= set(cfg["extensions"])
    assert cfg["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")


# -- the image -------------------------------------------------------------


def test_the_image_is_multi_stage_slim_non_root_with_the_system_tools():
    text = "\n".join(
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if not line.lstrip().startswith("#")
    )
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    apt = re.search(r"apt-get install[^\n]*\n(?:[^\n]*\\\n)*[^\n]*", text)
    assert apt
    for pkg in ("chromium", "bubblewrap", "ripgrep", "git", "tini"):
        assert re.search(rf"\b{pkg}\b", apt.group(0)), pkg
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in {"root", "0", "0:0"}
    assert "HEALTHCHECK" in text and "ENTRYPOINT" in text
    assert "ORCH_BROWSER_EXECUTABLE=/usr/bin/chromium" in text
    assert "playwright install" not in text and "PLAYWRIGHT_BROWSERS_PATH" not in text
    # The context keeps to what the image needs.
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("**") + 1 :][:1] == ["!pyproject.toml"]
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (
            f"!{copied.rstrip('/')}" in ignore
            or f"!{copied.split('/')[0]}/**" in ignore
            or f"!{copied.rsplit('/', 1)[0]}/**" in ignore
        ), copied


def test_the_entrypoint_maps_each_role_to_its_command():
    script = COMPOSE / "image" / "entrypoint.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for role, command in {
        "api": "orchestrator api --host 0.0.0.0 --port",
        "worker": "orchestrator worker",
        "flower": "orchestrator flower --port",
        "migrate": "orchestrator db upgrade",
    }.items():
        assert re.search(rf"^\s*{role}\)\s+exec {command}", text, re.M), role


# -- systemd ----------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values...]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None and "=" in line, f"{path.name}: {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key, []).append(value)
    return sections


UNITS = ("api", "worker", "flower", "migrate")


@pytest.mark.parametrize("unit", UNITS)
def test_each_systemd_unit_is_hardened_and_restarts(unit):
    s = parse_unit(SYSTEMD / f"orchestrator-{unit}.service")
    svc = s["Service"]
    assert svc["User"] == ["orchestrator"] and svc["Group"] == ["orchestrator"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
    }.items():
        assert svc[key] == [value], key
    assert "/var/lib/agent-orchestrator" in svc["ReadWritePaths"]
    assert svc["EnvironmentFile"] == ["/etc/agent-orchestrator/orchestrator.env"]
    assert "Environment" in svc and "ORCH_SECRETS_DIR=%d" in svc["Environment"]
    assert s["Install"]["WantedBy"] == ["multi-user.target"]
    assert svc["ExecStart"][0].split()[0].endswith("/orchestrator")
    if unit in ("api", "worker"):
        assert "orchestrator-migrate.service" in s["Unit"]["Requires"]
    if unit == "migrate":
        assert svc["Type"] == ["oneshot"]


def test_systemd_units_verify():
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    units = [str(SYSTEMD / f"orchestrator-{u}.service") for u in UNITS]
    run = subprocess.run([analyze, "verify", "--man=no", *units], capture_output=True, text=True)
    # The venv is not installed on this machine; everything else must be clean.
    problems = [
        line
        for line in (run.stdout + run.stderr).splitlines()
        if line.strip() and "is not executable" not in line
    ]
    assert problems == []


def test_the_systemd_environment_file_is_a_valid_configuration(monkeypatch):
    import os

    for var in [v for v in os.environ if v.startswith("ORCH_")]:
        monkeypatch.delenv(var)
    settings = Settings(_env_file=SYSTEMD / "orchestrator.env.example")
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    assert [t.secret for t in settings.api_tokens] == ["api_token_admin"]


def test_the_compose_env_example_names_only_real_settings():
    env = configparser.ConfigParser()
    env.optionxform = str  # type: ignore[assignment,method-assign]
    env.read_string("[env]\n" + (COMPOSE / ".env.example").read_text())
    orch = {k for k in env["env"] if k.startswith("ORCH_")}
    assert orch and orch <= settings_env_names()


# -- across every deployment file --------------------------------------------


def test_deployment_files_name_only_real_settings():
    assert unknown_orch_vars(deployment_files()) == {}


def test_deployment_files_run_only_real_commands(stack):
    argvs = [
        svc["command"]
        for svc in stack["services"].values()
        if isinstance(svc.get("command"), list) and svc["command"][0] == "orchestrator"
    ]
    for unit in UNITS:
        exec_start = parse_unit(SYSTEMD / f"orchestrator-{unit}.service")["Service"]["ExecStart"]
        argvs.append(["orchestrator", *exec_start[0].split()[1:]])
    assert len(argvs) >= 9
    assert missing_commands(argvs) == []

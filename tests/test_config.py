"""Configuration: every problem at once with where it was read from, unknown
names with a suggestion, `config check|show`, `--config`, and the generated
reference files kept fresh. Secrets never printed."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.config import report as cr
from tests.cli_helpers import cli, shape_env

SECRET = "sk-very-secret-config-value-0001"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return shape_env(tmp_path, **extra)


def test_every_bad_value_is_named_with_its_source_all_at_once(tmp_path: Path) -> None:
    toml = tmp_path / "orch.toml"
    toml.write_text('model_timeout_s = -1\nlog_level = "LOUD"\n')
    (tmp_path / ".env").write_text("ORCH_WORKER_CONCURRENCY=0\n")
    env = _env(tmp_path, ORCH_TIER="god", ORCH_MODEL_API_KEY=SECRET, ORCH_CONFIG=str(toml))
    result = cli(env, "config", "check", "--json", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    data = json.loads(result.stdout)
    by_var = {p["variable"]: p for p in data["problems"]}
    assert set(by_var) == {
        "ORCH_TIER",
        "ORCH_WORKER_CONCURRENCY",
        "ORCH_MODEL_TIMEOUT_S",
        "ORCH_LOG_LEVEL",
    }
    assert by_var["ORCH_TIER"]["source"] == "environment variable ORCH_TIER"
    assert by_var["ORCH_TIER"]["example"] == "read-only | read-write | exec"
    assert by_var["ORCH_WORKER_CONCURRENCY"]["source"] == (
        f".env file {(tmp_path / '.env').resolve()} (ORCH_WORKER_CONCURRENCY)"
    )
    assert by_var["ORCH_MODEL_TIMEOUT_S"]["source"] == (
        f"TOML file {toml.resolve()} (key model_timeout_s)"
    )
    assert by_var["ORCH_MODEL_TIMEOUT_S"]["got"] == "-1"
    assert all(p["message"] and p["example"] for p in data["problems"])
    assert SECRET not in result.stdout + result.stderr
    text = cli(env, "config", "check", cwd=tmp_path)
    assert text.returncode == 2 and text.stderr.count("error: ") == 4
    started = cli(env, "status", "nope", cwd=tmp_path)  # any command refuses to start
    assert started.returncode == 2 and "ORCH_TIER" in started.stderr
    assert "TOML file" in started.stderr and SECRET not in started.stderr


def test_a_bad_secret_value_is_reported_without_showing_it(tmp_path: Path) -> None:
    env = _env(tmp_path, ORCH_VAULT_ADDR=f"ftp://{SECRET}")
    data = json.loads(cli(env, "config", "check", "--json").stdout)
    assert {p["variable"] for p in data["problems"]} >= {"ORCH_VAULT_ADDR"}
    env = _env(tmp_path, ORCH_MODEL_API_KEY=SECRET, ORCH_STORE_URL=f"sqlite:///x?pw={SECRET}")
    assert SECRET not in cli(env, "config", "show").stdout


def test_unknown_names_are_warned_about_with_a_suggestion(tmp_path: Path) -> None:
    toml = tmp_path / "orch.toml"
    toml.write_text('modle_name = "x"\n')
    env = _env(tmp_path, ORCH_LOG_LEVL="DEBUG", ORCH_CONFIG=str(toml))
    ok = cli(env, "config", "check")
    assert ok.returncode == 0
    assert "ORCH_LOG_LEVL" in ok.stderr and "did you mean ORCH_LOG_LEVEL?" in ok.stderr
    assert "modle_name" in ok.stderr and "did you mean model_name?" in ok.stderr
    assert cli(env, "config", "check", "--strict").returncode == 2
    started = cli(env, "config", "show")  # warned at start, not refused
    assert started.returncode == 0 and "did you mean ORCH_LOG_LEVEL?" in started.stderr


def test_a_missing_or_broken_config_file_is_an_error(tmp_path: Path) -> None:
    env = _env(tmp_path)
    missing = cli(env, "--config", str(tmp_path / "nope.toml"), "config", "check")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("model_name = \n")
    broken = cli(env, "--config", str(bad), "config", "check", "--json")
    assert broken.returncode == 2 and "not valid TOML" in broken.stdout


def test_show_gives_each_value_its_source_and_masks_secrets(tmp_path: Path) -> None:
    toml = tmp_path / "orch.toml"
    toml.write_text('model_name = "from-toml"\nmodel_timeout_s = 12.5\n')
    (tmp_path / ".env").write_text("ORCH_MODEL_TIMEOUT_S=30\n")
    env = _env(tmp_path, ORCH_MODEL_API_KEY=SECRET, ORCH_VAULT_TOKEN="hvs-" + SECRET)
    result = cli(env, "--config", str(toml), "config", "show", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["settings"]
    assert rows["model_name"] == {
        "value": "from-toml",
        "secret": False,
        "source": f"TOML file {toml.resolve()} (key model_name)",
        "variable": "ORCH_MODEL_NAME",
    }
    assert rows["model_timeout_s"]["value"] == 30.0  # .env beats TOML
    assert rows["model_timeout_s"]["source"].startswith(".env file")
    assert rows["model_api_key"]["value"] == "***" and rows["model_api_key"]["secret"]
    assert rows["model_api_key"]["source"] == "environment variable ORCH_MODEL_API_KEY"
    assert rows["worker_concurrency"]["source"] == "default"
    assert SECRET not in result.stdout + result.stderr
    table = cli(env, "--config", str(toml), "config", "show", cwd=tmp_path)
    assert "ORCH_MODEL_NAME=from-toml" in table.stdout and SECRET not in table.stdout


def test_every_setting_has_an_example_and_a_type() -> None:
    from orchestrator.config.settings import Settings

    for name, info in Settings.model_fields.items():
        assert cr.example(info), name
        assert cr.type_text(info), name


def test_generated_reference_files_are_fresh() -> None:
    for kind, path in cr.GENERATED.items():
        assert path.exists() and path.read_text(encoding="utf-8") == cr.render(kind), (
            f"{path} is stale: run `{cr.REGENERATE}` and commit it"
        )
    from orchestrator.config.settings import Settings

    env_example = cr.GENERATED["env"].read_text()
    for name in Settings.model_fields:
        assert f"#ORCH_{name.upper()}=" in env_example
    assert SECRET not in env_example


def test_a_list_setting_takes_json_or_commas_and_bad_json_is_a_listed_problem(
    tmp_path: Path,
) -> None:
    """ORCH_METRICS_REPORTERS=prometheus used to crash every command with a
    traceback (the settings source decoded it as JSON before validation)."""
    for value, want in (
        ("prometheus", ["prometheus"]),
        ("prometheus, otlp", ["prometheus", "otlp"]),
        ('["stdout"]', ["stdout"]),
        ("", []),
    ):
        result = cli(_env(tmp_path, ORCH_METRICS_REPORTERS=value), "config", "show", "--json")
        assert result.returncode == 0, result.stderr
        got = json.loads(result.stdout)["settings"]["metrics_reporters"]["value"]
        assert got == want, value
    for value in ('["prometheus"', "prometheus,bogus"):
        env = _env(tmp_path, ORCH_METRICS_REPORTERS=value)
        checked = cli(env, "config", "check", "--json")
        assert checked.returncode == 2, checked.stderr
        [problem] = json.loads(checked.stdout)["problems"]
        assert problem["variable"] == "ORCH_METRICS_REPORTERS"
        status = cli(env, "status", "some-job")
        assert status.returncode == 2 and "Traceback" not in status.stderr
        assert "ORCH_METRICS_REPORTERS" in status.stderr

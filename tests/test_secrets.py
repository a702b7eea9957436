"""Named secrets from the environment, files and the keychain; every read
recorded as SecretAccessed (never the value); tool subprocesses never see
service secrets. Real backends: a keyrings.alt file keychain, a SQLite store."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
from pydantic import SecretStr

from events.replay import replay
from events.store import open_store
from orchestrator.config import secrets
from orchestrator.config.settings import Settings
from orchestrator.errors import ConfigError
from orchestrator.run.steps import ShellStep
from orchestrator.tools.shell import run_shell
from tests.cli_helpers import cli, shape_env


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(state_dir=tmp_path / "state", secrets_dir=tmp_path / "run-secrets", **kw)


def _accesses(s: Settings) -> list[tuple[str, str, object]]:
    st = open_store(s.effective_store_url)
    try:
        return [
            (e.stream_id, e.actor, e.payload) for e in st.read_all() if e.type == "SecretAccessed"
        ]
    finally:
        st.close()


def test_from_the_environment_and_recorded_without_the_value(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    store = secrets.SecretStore(s, environ={"ORCH_SECRET_DEPLOY_TOKEN": "tok-123456789"})
    got = store.get("deploy_token", reader="test:deploy")
    assert isinstance(got, SecretStr) and got.get_secret_value() == "tok-123456789"
    [(stream, _, payload)] = _accesses(s)
    assert stream.startswith(secrets.STREAM_PREFIX)
    assert (payload.name, payload.source, payload.reader) == (
        "deploy_token",
        "env:ORCH_SECRET_DEPLOY_TOKEN",
        "test:deploy",
    )
    assert "tok-123456789" not in payload.model_dump_json()
    assert "tok-123456789" in secrets.process_values()
    assert store.get("missing_one", reader="test") is None
    assert len(_accesses(s)) == 1  # misses are logged, not recorded


def test_a_secret_setting_wins_and_its_source_is_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ORCH_MODEL_API_KEY", "sk-from-env-0123456789")
    s = Settings(state_dir=tmp_path / "state")
    got = secrets.SecretStore(s).get("model_api_key", reader="provider:openai")
    assert got is not None and got.get_secret_value() == "sk-from-env-0123456789"
    assert _accesses(s)[0][2].source == "env:ORCH_MODEL_API_KEY"


def test_from_a_secret_file_on_the_session_stream(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    s.secrets_dir.mkdir()
    (s.secrets_dir / "db_password").write_text("  pg-pass-987654\n")
    got = secrets.SecretStore(s, environ={}).get(
        "db_password", reader="store", stream="session-xyz"
    )
    assert got is not None and got.get_secret_value() == "pg-pass-987654"
    [(stream, _, payload)] = _accesses(s)
    assert stream == "session-xyz" and payload.source == f"file:{s.secrets_dir / 'db_password'}"
    st = open_store(s.effective_store_url)
    assert replay(st, "session-xyz").session.status == "new"  # replay accepts the new type
    st.close()
    with pytest.raises(ConfigError, match="plain file name"):
        secrets.SecretStore(s, environ={}).get("../etc/passwd", reader="x")


def test_from_the_keychain(tmp_path: Path) -> None:
    from keyrings.alt.file import PlaintextKeyring

    ring = PlaintextKeyring()
    ring.file_path = str(tmp_path / "keyring.cfg")
    ring.set_password("agent-orchestrator", "github_token", "ghp-keychain-value-42")
    s = _settings(tmp_path, secret_sources=("env", "keyring"))
    got = secrets.SecretStore(s, environ={}, keyring_backend=ring).get(
        "github_token", reader="test"
    )
    assert got is not None and got.get_secret_value() == "ghp-keychain-value-42"
    assert _accesses(s)[0][2].source == "keyring:agent-orchestrator"


def test_the_keychain_through_the_keyring_package_api(tmp_path: Path) -> None:
    import keyring
    from keyrings.alt.file import PlaintextKeyring

    before = keyring.get_keyring()
    ring = PlaintextKeyring()
    ring.file_path = str(tmp_path / "keyring.cfg")
    keyring.set_keyring(ring)
    try:
        keyring.set_password("svc-test", "api", "kr-value-1234567")
        s = _settings(tmp_path, secret_sources=("keyring",), keyring_service="svc-test")
        got = secrets.SecretStore(s, environ={}).get("api", reader="test")
        assert got is not None and got.get_secret_value() == "kr-value-1234567"
    finally:
        keyring.set_keyring(before)


def test_vault_without_an_address_is_a_config_error(tmp_path: Path) -> None:
    s = _settings(tmp_path, secret_sources=("vault",))
    with pytest.raises(ConfigError, match="vault_addr"):
        secrets.SecretStore(s, environ={}).get("x_token", reader="test")


@pytest.mark.skipif(shutil.which("vault") is None, reason="no vault binary to run a dev server")
def test_vault_kv_v2(tmp_path: Path) -> None:  # pragma: no cover - needs a vault binary
    import subprocess
    import time

    import hvac

    proc = subprocess.Popen(
        [
            "vault",
            "server",
            "-dev",
            "-dev-root-token-id=root",
            "-dev-listen-address=127.0.0.1:18200",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = hvac.Client(url="http://127.0.0.1:18200", token="root")
        for _ in range(50):
            try:
                if client.sys.is_initialized():
                    break
            except Exception:  # noqa: BLE001
                time.sleep(0.1)
        client.secrets.kv.v2.create_or_update_secret(
            path="agent-orchestrator", secret={"db_pass": "vault-val-123"}
        )
        s = _settings(
            tmp_path,
            secret_sources=("vault",),
            vault_addr="http://127.0.0.1:18200",
            vault_token=SecretStr("root"),
        )
        got = secrets.SecretStore(s, environ={}).get("db_pass", reader="test")
        assert got is not None and got.get_secret_value() == "vault-val-123"
    finally:
        proc.terminate()
        proc.wait()


def test_known_values_include_settings_secrets(monkeypatch) -> None:
    from orchestrator.config.settings import get_settings

    monkeypatch.setenv("ORCH_VAULT_TOKEN", "hvs-known-value-0001")
    get_settings.cache_clear()
    try:
        # The settings are passed in: known_values reads no settings itself.
        assert "hvs-known-value-0001" in secrets.known_values(get_settings())
    finally:
        monkeypatch.delenv("ORCH_VAULT_TOKEN")
        get_settings.cache_clear()


def test_the_model_api_key_is_read_through_the_store(tmp_path: Path) -> None:
    from orchestrator.agent.providers.factory import api_key

    s = _settings(tmp_path)
    s.secrets_dir.mkdir()
    (s.secrets_dir / "model_api_key").write_text("sk-file-key-55555\n")
    assert api_key(s) == "sk-file-key-55555"
    [(_, _, payload)] = _accesses(s)
    assert (payload.name, payload.reader) == ("model_api_key", "provider:openai")


def test_a_shell_tool_never_sees_service_secrets(tmp_path: Path, monkeypatch) -> None:
    key, filed = "sk-service-key-77777777", "file-secret-value-31337"
    monkeypatch.setenv("ORCH_MODEL_API_KEY", key)
    monkeypatch.setenv("ORCH_SECRET_OTHER", "other-secret-value-2")
    s = _settings(tmp_path)
    s.secrets_dir.mkdir()
    (s.secrets_dir / "deploy_key").write_text(filed)
    assert secrets.SecretStore(s).get("deploy_key", reader="test") is not None
    ws = tmp_path / "ws"
    ws.mkdir()
    result = run_shell(ws, ShellStep(command=["env"]))
    assert result.exit_code == 0 and "PATH=" in result.output
    for value in (key, filed, "other-secret-value-2", "ORCH_"):
        assert value not in result.output


def test_tool_output_in_events_is_masked_in_every_encoding(tmp_path: Path) -> None:
    key = "sk-live-masked-in-events-123"
    env = shape_env(tmp_path, ORCH_MODEL_API_KEY=key)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "k.txt").write_text(key)
    (ws / "k.b64").write_text("xy" + base64.b64encode(b"z" + key.encode()).decode())
    run = cli(
        env,
        "sandbox",
        "run",
        "-w",
        str(ws),
        "--",
        "sh",
        "-c",
        "cat k.txt; echo; cat k.b64; echo; od -An -tx1 k.txt | tr -d ' \\n'; echo",
    )
    assert run.returncode == 0, run.stderr
    exported = cli(env, "audit", "export", "--decrypt")  # tool output is sealed: open it
    assert exported.returncode == 0
    stored = exported.stdout
    assert "ToolCallCompleted" in stored and "***" in stored
    for form in (key, base64.b64encode(b"z" + key.encode()).decode()[2:-2], key.encode().hex()):
        assert form not in stored and form not in run.stdout + run.stderr


def test_passwords_in_service_urls_are_known_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from orchestrator.config.settings import get_settings
    from orchestrator.guard.masking import mask

    monkeypatch.setenv("ORCH_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("ORCH_STORE_URL", "postgresql://app:pg%2Fpass-7781@db/orch")
    monkeypatch.setenv("ORCH_BROKER_URL", "redis://:redispass-4410@cache:6379/0")
    get_settings.cache_clear()
    try:
        known = secrets.known_values(get_settings())
        assert {"pg/pass-7781", "redispass-4410"} <= set(known)
        assert "pg/pass-7781" not in mask("connect failed: password pg/pass-7781", known)
    finally:
        get_settings.cache_clear()

"""Named secrets: where they are read from, who read them, and the values the
masker must hide.

    value = secrets.get("model_api_key", reader="provider:openai")   # SecretStr | None

Sources, tried in the order `secret_sources` gives (default env, file):
  - env: a `SecretStr` setting of that name (ORCH_<NAME>, .env or the TOML
    file, with a `<name>_file` setting naming a file), else ORCH_SECRET_<NAME>;
  - file: `secrets_dir/<name>` (Docker and Kubernetes mount secrets there),
    surrounding whitespace stripped;
  - keyring: the OS keychain, service `keyring_service`, user `<name>`
    (`pip install 'agent-orchestrator[keyring]'`);
  - vault: HashiCorp Vault KV v2 at `vault_mount`/`vault_path`, key `<name>`
    (`pip install 'agent-orchestrator[vault]'`, `vault_addr`, `vault_token`).

Every read that finds a value is logged (logger `orchestrator.config.secrets`: name,
source, reader) and recorded as a `SecretAccessed` event: name, source and
reader, never the value. Stream: `secrets:<hostname>` by default, so an
auditor asks "what did this machine read" of one stream and the per-session
streams keep only what the session's own steps did; a caller working for a
session passes `stream=<session id>` to record it there instead. Appends go
to the stream's end (`expected_seq=None`): reads are facts, not decisions,
so nothing must serialize on them. A store that cannot be written to is
logged and the read goes on (a secret read is not refused because the audit
store is down; the log line still says it happened).

`known_values(settings)` is every secret value read in this process plus every
`SecretStr` of the settings passed in and the passwords in its service URLs:
what `orchestrator.guard.masking.mask` must hide in anything that leaves the
process, and what the event store's masking filter hides in every event. The
composition roots pass their settings (and call `install(settings)` once, for
the log and error paths that have no settings of their own); nothing here
reads `get_settings()` for it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from orchestrator.config.report import gather, origin
from orchestrator.config.seen import install, known_values, process_values, remember
from orchestrator.config.settings import get_settings
from orchestrator.errors import ConfigError

__all__ = [
    "SecretStore",
    "get",
    "known_values",
    "install",
    "process_values",
    "store_recorder",
    "STREAM_PREFIX",
]

log = logging.getLogger("orchestrator.config.secrets")
STREAM_PREFIX = "secrets:"

Recorder = Callable[[str, str, str, str | None], None]  # (name, source, reader, stream)

_lock = threading.Lock()


def store_recorder(settings: Any, actor: str | None = None) -> Recorder:
    """Records SecretAccessed on the configured event store (opened on first use)."""

    def record(name: str, source: str, reader: str, stream: str | None) -> None:
        from events.envelope import NewEvent
        from events.payloads import SecretAccessed
        from events.store import open_store
        from orchestrator.audit.protect import event_filters

        url = settings.effective_store_url
        with _lock:
            store = _stores.get((os.getpid(), url))  # engines do not survive a fork
            if store is None:
                store = _stores[(os.getpid(), url)] = open_store(
                    url, upgrade=settings.embedded_store, filters=event_filters(settings)
                )
        stream_id = stream or STREAM_PREFIX + socket.gethostname()
        event = NewEvent.create(
            SecretAccessed(name=name, source=source, reader=reader),
            actor=actor or settings.worker_actor,
            correlation_id=stream_id,
        )
        store.append(stream_id, [event], None)

    return record


_stores: dict[tuple[int, str], Any] = {}  # (pid, url): the recorder's stores


class SecretStore:
    """Reads named secrets from the sources the settings list."""

    def __init__(
        self,
        settings: Any,
        *,
        environ: Mapping[str, str] | None = None,
        recorder: Recorder | None = None,
        keyring_backend: Any = None,
    ) -> None:
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        self.recorder = recorder if recorder is not None else store_recorder(settings)
        self.keyring_backend = keyring_backend

    def get(self, name: str, *, reader: str, stream: str | None = None) -> SecretStr | None:
        """The secret `name` from the first source that has it, or None."""
        for kind in self.settings.secret_sources:
            found = getattr(self, f"_from_{kind}")(name)
            if found is not None:
                value, source = found
                remember(value)
                log.info("secret %s read from %s by %s", name, source, reader)
                try:
                    self.recorder(name, source, reader, stream)
                except Exception as exc:  # noqa: BLE001 - the audit store may be down
                    log.warning(
                        "secret %s read by %s could not be recorded: %s",
                        name,
                        reader,
                        type(exc).__name__,
                    )
                return SecretStr(value)
        log.debug(
            "secret %s not found (sources %s) for %s",
            name,
            ", ".join(self.settings.secret_sources),
            reader,
        )
        return None

    # -- sources: each returns (value, source) or None ------------------------------

    def _from_env(self, name: str) -> tuple[str, str] | None:
        s = self.settings
        fields = type(s).model_fields
        if name in fields and isinstance(getattr(s, name), SecretStr):
            where = origin(gather(self.environ), name)
            src = (
                f"env:{where.key}"
                if where.kind == "env"
                else f"dotenv:{where.path}"
                if where.kind == "dotenv"
                else f"toml:{where.path}#{name}"
                if where.kind == "toml"
                else "settings"
            )
            return getattr(s, name).get_secret_value(), src
        path = getattr(s, f"{name}_file", None) if f"{name}_file" in fields else None
        if path is not None:
            return _read_file(Path(path), f"{name}_file"), f"file:{path}"
        var = f"ORCH_SECRET_{name.upper()}"
        value = self.environ.get(var)
        return (value, f"env:{var}") if value else None

    def _from_file(self, name: str) -> tuple[str, str] | None:
        if "/" in name or name.startswith("."):
            raise ConfigError(f"secret name {name!r} is not a plain file name")
        path = Path(self.settings.secrets_dir).expanduser() / name
        if not path.is_file():
            return None
        value = _read_file(path, "secrets_dir")
        return (value, f"file:{path}") if value else None

    def _from_keyring(self, name: str) -> tuple[str, str] | None:
        backend = self.keyring_backend
        if backend is None:
            try:
                import keyring
            except ImportError:
                raise ConfigError(
                    "secret_sources lists keyring but the keyring package is "
                    "not installed: pip install 'agent-orchestrator[keyring]'"
                ) from None
            backend = keyring.get_keyring()
        service = self.settings.keyring_service
        value = backend.get_password(service, name)
        return (value, f"keyring:{service}") if value else None

    def _from_vault(self, name: str) -> tuple[str, str] | None:
        s = self.settings
        if not s.vault_addr:
            raise ConfigError(
                "secret_sources lists vault but vault_addr is unset: set "
                "ORCH_VAULT_ADDR, e.g. https://vault.internal:8200"
            )
        try:
            import hvac
        except ImportError:
            raise ConfigError(
                "secret_sources lists vault but the hvac package is not "
                "installed: pip install 'agent-orchestrator[vault]'"
            ) from None
        token = s.vault_token.get_secret_value() if s.vault_token else None
        client = hvac.Client(url=s.vault_addr, token=token)
        try:
            data = client.secrets.kv.v2.read_secret_version(
                path=s.vault_path, mount_point=s.vault_mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            return None
        value = data["data"]["data"].get(name)
        return (str(value), f"vault:{s.vault_mount}/{s.vault_path}") if value else None


def _read_file(path: Path, setting: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the secret file {path} ({setting}): {exc.strerror}"
        ) from None


_default: SecretStore | None = None


def default_store() -> SecretStore:
    global _default
    if _default is None:
        _default = SecretStore(get_settings())
    return _default


def get(name: str, *, reader: str, stream: str | None = None) -> SecretStr | None:
    """The secret `name` from the configured sources (see the module docstring)."""
    return default_store().get(name, reader=reader, stream=stream)

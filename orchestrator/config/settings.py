"""The one configuration object. Nothing else reads `os.environ`.

Sources, strongest first: environment (`ORCH_` prefix, nested with `__`), a
`.env` file, a TOML file named by `ORCH_CONFIG`, then defaults. Leaving the
store, broker and result backend unset gives the embedded default: SQLite
files under `state_dir` and a worker the CLI starts on demand.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from orchestrator.config import report


def _list_value(value: Any) -> Any:
    """A list setting as written in the environment or .env: a JSON list
    (`["prometheus", "otlp"]`) or comma-separated words (`prometheus,otlp`;
    "" is the empty list). Bad JSON is a validation error like any other bad
    value, listed by `config check`, not a crash before validation."""
    if not isinstance(value, str):
        return value  # TOML and keyword arguments give lists already
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not a JSON list ({exc}); write a JSON list or a,b,c") from None
    return [word.strip() for word in text.split(",") if word.strip()]


# The list settings below are `NoDecode`: the settings source would otherwise
# json-decode them itself and raise outside validation on a value that is not
# JSON (`ORCH_METRICS_REPORTERS=prometheus`), so every command crashed with a
# traceback instead of `config check` listing the problem.


def _json_value(value: Any) -> Any:
    """A list of objects (api_tokens) from the environment: JSON only, and
    bad JSON a validation error like any other."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc}); write a JSON list of objects") from None


class ApiToken(BaseModel):
    """One bearer token of the HTTP API (docs/api.md): whose it is, its roles,
    and either the token's sha256 (hex) or the name of a secret-store entry
    holding the token. The token itself is never configured in the clear."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    principal: str = Field(pattern=r"^[A-Za-z0-9._@-]{1,64}$")
    roles: tuple[Literal["submitter", "operator", "auditor", "admin"], ...] = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    secret: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> ApiToken:
        if (self.sha256 is None) == (self.secret is None):
            raise ValueError(
                f"api token of {self.principal!r}: give exactly one of "
                "`sha256` (from `orchestrator api token`) or `secret`"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ORCH_", env_nested_delimiter="__", env_file=".env", extra="ignore", frozen=True
    )

    state_dir: Path = Field(
        default=Path(".orchestrator"),
        description="Folder of the embedded store, broker and worker files",
    )
    store_url: str | None = Field(
        default=None,
        description=(
            "Event store: sqlite:///PATH or postgresql://USER@HOST/DB; unset = embedded SQLite"
        ),
    )
    broker_url: str | None = Field(
        default=None,
        description=("Celery broker: redis://HOST:6379/0; unset = embedded SQLite broker"),
    )
    result_backend: str | None = Field(
        default=None,
        description=(
            "Celery result backend: redis://...; unset = embedded SQLite results. Step tasks "
            "store only their failures (their record is the event store)"
        ),
    )
    worker_concurrency: int = Field(default=2, ge=1, le=256)
    embedded_poll_interval_s: float = Field(default=0.005, gt=0, le=5)
    visibility_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "Unacknowledged messages are redelivered after this long: keep it above the "
            "longest step's timeout"
        ),
    )
    task_max_retries: int = Field(default=5, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    actor: str | None = Field(default=None, description="Who submits (default user:LOGIN)")
    policy_file: Path | None = Field(
        default=None,
        description=(
            "A policy YAML every job runs under, combined with the job's own and `--policy` "
            "(the strictest setting wins); docs/security.md"
        ),
    )
    tier: Literal["read-only", "read-write", "exec"] | None = Field(
        default=None,
        description=(
            "The highest tier any job gets here (the strictest of this, the job's and --tier)"
        ),
    )
    audit_key_file: Path | None = Field(
        default=None,
        description=(
            "Ed25519 private key (PEM) that signs digests of stream heads; keep it out of "
            "the database's reach (`orchestrator audit keygen` makes one)"
        ),
    )
    audit_sign_interval_s: float = Field(
        default=300.0,
        ge=0,
        description=(
            "With audit_key_file: sign a digest of the stream heads changed since the last "
            "one this often (celery beat on a server broker, the worker itself on the "
            "embedded one); 0 = only when sessions end and workers stop"
        ),
    )
    audit_public_keys: Annotated[tuple[Path, ...], NoDecode, BeforeValidator(_list_value)] = Field(
        default=(),
        description=(
            "Public keys (PEM) whose digests `audit verify` trusts, as a JSON list or comma-separated; the "
            "signing key's own public key is always trusted"
        ),
    )

    seal_payloads: bool = Field(
        default=True,
        description=(
            "Encrypt the forgettable fields of events (file contents and diffs, tool "
            "output, prompts, model replies, step env values) with a per-stream data key, "
            "so `orchestrator audit forget` can erase them; needs a key-encryption key "
            "(data_kek_file; the embedded store makes one)"
        ),
    )
    data_kek_file: Path | None = Field(
        default=None,
        description=(
            "Key-encryption key (base64 of 32 random bytes, mode 600) that wraps the data "
            "keys of sealed fields; default for the embedded store: data-kek.key in the "
            "state folder, made on first use. A server store seals only when it is set "
            "(the same file on every worker); keep it out of the database's backups"
        ),
    )

    # -- worker heartbeats (orchestrator.ops.heartbeat, orchestrator.ops.health) -------
    worker_heartbeat_interval_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description=(
            "How often each worker checks its store and publishes a heartbeat (a file in "
            "state_dir/heartbeats and, on a Redis broker, a Redis key)"
        ),
    )
    worker_heartbeat_max_age_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description=(
            "A heartbeat older than this does not count: readiness needs one fresh worker"
        ),
    )
    worker_probe_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description=(
            "Serve the worker's /healthz, /readyz and /metrics on this port (Kubernetes "
            "probes, Prometheus); unset = no HTTP endpoint, the heartbeat file only"
        ),
    )

    # -- store outages and stalled jobs (orchestrator.run.recording, orchestrator.service.resume) --
    record_patience_s: float = Field(
        default=300.0,
        ge=0,
        le=86400,
        description=(
            "How long a worker keeps retrying to record a step's finished result while the "
            "event store is unavailable; past that the result waits in state_dir/spool and "
            "is recorded once the store is back"
        ),
    )
    spool_sweep_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description=("How often each worker tries to record the results waiting in its spool"),
    )
    stall_after_s: float = Field(
        default=900.0,
        gt=0,
        description=(
            "A running job whose sessions made no progress for this long, with no live "
            "task, is reported stalled (status, health, the jobs_stalled metric); "
            "`orchestrator resume JOB` re-enqueues what is unfinished"
        ),
    )

    # -- workers and Flower (tasks.worker_probe, orchestrator.cli.ops) --------
    worker_probe_address: str = Field(
        default="0.0.0.0",
        description=(
            "Interface the worker's probe endpoint listens on (0.0.0.0: the pod's IP, "
            "for the kubelet)"
        ),
    )
    flower_port: int = Field(
        default=5555, ge=1, le=65535, description=("`orchestrator flower` listens on this port")
    )
    flower_address: str = Field(
        default="127.0.0.1",
        description=(
            "`orchestrator flower` listens on this interface (0.0.0.0 to reach it from "
            "other machines: then set flower_basic_auth)"
        ),
    )
    flower_basic_auth: SecretStr | None = Field(
        default=None,
        description=(
            "user:password[,user2:password2] Flower asks for (a secret: passed to Flower "
            "in its environment, never on its command line)"
        ),
    )
    flower_url_prefix: str | None = Field(
        default=None,
        description=("Serve Flower under this path (behind a reverse proxy), e.g. flower"),
    )

    # -- the model (orchestrator.agent.providers) ----------------------------------
    model_provider: Literal["scripted", "openai"] = Field(
        default="scripted",
        description=(
            "scripted: replays `model_script` (tests, demos, offline); openai: any "
            "OpenAI-compatible chat-completions endpoint at `model_base_url`"
        ),
    )
    model_name: str = Field(default="gpt-4o-mini", description="Model the agent calls")
    model_base_url: str | None = Field(
        default=None,
        description=(
            "Chat-completions endpoint, e.g. http://127.0.0.1:11434/v1 for Ollama; "
            "unset = api.openai.com"
        ),
    )
    model_api_key: SecretStr | None = Field(
        default=None, description=("API key (a secret: never logged, never in an event)")
    )
    model_api_key_file: Path | None = Field(
        default=None,
        description=("File holding the API key (a mounted secret); read when the provider starts"),
    )
    model_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    model_max_attempts: int = Field(
        default=5,
        ge=1,
        le=20,
        description=(
            "Tries per model call; 429, 5xx and timeouts are retried, honouring Retry-After"
        ),
    )
    model_retry_budget_s: float = Field(
        default=120.0, gt=0, description=("Give up retrying a model call after this long")
    )
    model_stream: bool = Field(default=False, description="Stream responses from the endpoint")
    model_script: Path | None = Field(
        default=None, description=("The scripted provider's YAML file of assistant turns")
    )
    prompt_storage: Literal["masked", "digest"] = Field(
        default="masked",
        description=(
            "masked: events keep prompts and replies with secrets masked; digest: only "
            "their sha256, for teams that must not retain content"
        ),
    )

    # -- secrets (orchestrator.config.secrets, docs/security.md) ----------------------
    secret_sources: Annotated[
        tuple[Literal["env", "file", "keyring", "vault"], ...],
        NoDecode,
        BeforeValidator(_list_value),
    ] = Field(
        default=("env", "file"),
        description=(
            "Where a named secret is looked for, in order, as a JSON list or comma-separated: env (a "
            "SecretStr setting, or ORCH_SECRET_<NAME>), file (secrets_dir/<name>), "
            "keyring (the OS keychain; pip install 'agent-orchestrator[keyring]'), vault "
            "(HashiCorp Vault KV v2; pip install 'agent-orchestrator[vault]')"
        ),
    )
    secrets_dir: Path = Field(
        default=Path("/run/secrets"),
        description=(
            "Folder of secret files, one per name (Docker and Kubernetes mount them here)"
        ),
    )
    keyring_service: str = Field(
        default="agent-orchestrator",
        min_length=1,
        description=("The keychain service secrets are stored under (keyring set SERVICE NAME)"),
    )
    vault_addr: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description=("Vault server, e.g. https://vault.internal:8200"),
    )
    vault_token: SecretStr | None = Field(
        default=None, description=("Vault token (a secret: never logged, never in an event)")
    )
    vault_mount: str = Field(
        default="secret", min_length=1, description=("Mount point of the KV v2 engine")
    )
    vault_path: str = Field(
        default="agent-orchestrator",
        min_length=1,
        description=("The KV v2 secret whose keys are the secret names"),
    )

    # -- observability (orchestrator.ops.logs, .metrics, .tracing) ----------------
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description=(
            "Log lines as JSON (one object a line) or for people; auto = console on a "
            "terminal, JSON otherwise (files, pipes, containers)"
        ),
    )
    metrics_reporters: Annotated[
        tuple[Literal["prometheus", "otlp", "stdout"], ...],
        NoDecode,
        BeforeValidator(_list_value),
    ] = Field(
        default=("prometheus",),
        description=(
            "Where metrics go, as a JSON list or comma-separated: prometheus (GET /metrics and the worker's "
            "probe port; multiprocess files under metrics_dir), otlp (pushed to "
            "otlp_endpoint), stdout (JSON lines every metrics_interval_s); [] = off"
        ),
    )
    metrics_dir: Path | None = Field(
        default=None,
        description=(
            "The Prometheus multiprocess folder a worker and its prefork children write; "
            "unset = state_dir/metrics"
        ),
    )
    metrics_interval_s: float = Field(
        default=15.0, gt=0, le=3600, description=("How often the otlp and stdout reporters push")
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description=(
            "OTLP/HTTP collector base URL, e.g. http://127.0.0.1:4318 (/v1/traces and "
            "/v1/metrics are appended)"
        ),
    )
    otel_service_name: str = Field(
        default="orchestrator", description=("service.name on traces and OTLP metrics")
    )
    trace_exporter: Literal["none", "otlp", "console"] = Field(
        default="none",
        description=(
            "none: no spans; otlp: spans to otlp_endpoint; console: spans printed to "
            "stderr (debugging)"
        ),
    )

    # -- browser (orchestrator.tools.web.browser_pool, orchestrator.tools.web.browser) -------
    browser_executable: Path = Field(
        default=Path("/usr/bin/chromium"),
        description=("The system Chromium Playwright drives; a browser is never downloaded"),
    )
    browser_pool_size: int = Field(
        default=2,
        ge=1,
        le=32,
        description=("Chromium instances per worker process; a call waits for a free one"),
    )
    browser_max_uses: int = Field(
        default=50,
        ge=1,
        le=100000,
        description=("Recycle an instance after this many calls (memory, leaked state)"),
    )
    browser_call_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description=("One browser call, from waiting for an instance to the last action"),
    )
    browser_launch_timeout_s: float = Field(
        default=20.0,
        gt=0,
        le=300,
        description=("Starting one Chromium; a launch that takes longer counts as a crash"),
    )
    browser_artifacts_dir: Path | None = Field(
        default=None,
        description=("Where screenshots are kept as <sha256>.png; unset = state_dir/artifacts"),
    )

    # -- network tools (orchestrator.tools.web, docs/network.md) ----------------------
    fetch_max_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description=(
            "web_fetch reads at most this many body bytes after decompression (a gzip "
            "bomb stops here); a step's max_bytes can only lower it"
        ),
    )
    fetch_timeout_s: float = Field(
        default=20.0, gt=0, le=600, description=("One web_fetch attempt, connect to last byte")
    )
    fetch_max_redirects: int = Field(
        default=5,
        ge=0,
        le=30,
        description=("Redirects web_fetch follows, each one egress-checked again"),
    )
    fetch_user_agent: str = Field(default="agent-orchestrator/0.1 (+web_fetch)")
    net_retry_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description=(
            "Tries per network request; connect errors, timeouts, 429 and 502-504 are retried"
        ),
    )
    net_retry_budget_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description=("Give up retrying a network request after this long (Retry-After included)"),
    )
    net_retry_base_s: float = Field(
        default=0.5,
        ge=0,
        le=60,
        description=("First backoff delay; doubled per attempt, with full jitter"),
    )
    breaker_failure_threshold: int = Field(
        default=5,
        ge=1,
        le=1000,
        description=("Consecutive failed requests to one host that open its circuit"),
    )
    breaker_reset_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description=("How long an open circuit fails fast before one probe is let through"),
    )
    search_provider: Literal["searxng", "brave"] = Field(
        default="searxng",
        description=("web_search backend: a SearxNG instance's JSON API, or the Brave Search API"),
    )
    search_url: str | None = Field(
        default=None,
        description=(
            "SearxNG base URL (e.g. http://searx.internal:8888) or a Brave endpoint override"
        ),
    )
    search_api_key: SecretStr | None = Field(
        default=None,
        description=("Brave's X-Subscription-Token (a secret: never logged, never in an event)"),
    )
    search_max_results: int = Field(default=10, ge=1, le=50)

    # -- HTTP API (orchestrator.api, docs/api.md) ------------------------------
    api_tokens: Annotated[tuple[ApiToken, ...], NoDecode, BeforeValidator(_json_value)] = Field(
        default=(),
        description=(
            "Bearer tokens, a JSON list of {principal, roles, sha256 | secret}; "
            "`orchestrator api token` makes one. None: only /healthz and /readyz answer"
        ),
    )
    api_workspace_root: Path | None = Field(
        default=None,
        description=(
            "Targets of jobs submitted over HTTP resolve against this folder and must stay "
            "inside it (symlinks resolved); unset = POST /jobs is refused"
        ),
    )
    api_max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Larger request bodies get 413, unread",
    )
    api_metrics_public: bool = Field(
        default=False,
        description=("GET /metrics without a token (for a scraper on a private network)"),
    )
    api_sse_poll_s: float = Field(
        default=0.2,
        gt=0,
        le=10,
        description=("How often an event stream (SSE) looks for a session's new events"),
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        toml = os.environ.get("ORCH_CONFIG")
        if toml:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    # -- derived -------------------------------------------------------------

    @property
    def state(self) -> Path:
        return self.state_dir.expanduser().resolve()

    @property
    def effective_metrics_dir(self) -> Path:
        return (
            self.metrics_dir.expanduser().resolve() if self.metrics_dir else self.state / "metrics"
        )

    @property
    def embedded_store(self) -> bool:
        return self.store_url is None

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url is None

    @property
    def effective_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.state / 'events.sqlite'}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or f"orchsqla+sqlite:///{self.state / 'broker.sqlite'}"

    @property
    def effective_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return f"db+sqlite:///{self.state / 'results.sqlite'}"

    @property
    def submitter(self) -> str:
        return self.actor or f"user:{getpass.getuser()}"

    @property
    def artifacts_dir(self) -> Path:
        return (
            self.browser_artifacts_dir.expanduser().resolve()
            if self.browser_artifacts_dir
            else self.state / "artifacts"
        )

    @property
    def worker_actor(self) -> str:
        return f"worker:{socket.gethostname()}:{os.getpid()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings, read once per process; every problem listed at once, each with
    where it was read from (orchestrator.config.report); unknown ORCH_* names
    are warned about."""
    return report.load()  # type: ignore[no-any-return]


report.use_model(Settings)

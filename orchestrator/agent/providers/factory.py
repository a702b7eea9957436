"""The provider the settings (and a job's `agent:` block) name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.agent.providers.base import Provider
from orchestrator.agent.providers.openai_compat import OpenAIProvider
from orchestrator.agent.providers.scripted import ScriptedProvider
from orchestrator.config.settings import Settings
from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.run.jobspec import AgentSpec


def make_provider(
    settings: Settings, *, provider: str | None = None, script: Path | None = None
) -> Provider:
    kind = provider or settings.model_provider
    if kind == "scripted":
        path = script or settings.model_script
        if path is None:
            raise ConfigError(
                "the scripted model needs a script: set `agent.script` in the "
                "job spec or ORCH_MODEL_SCRIPT to a YAML file of assistant turns "
                "(see orchestrator/examples/), or use ORCH_MODEL_PROVIDER=openai"
            )
        return ScriptedProvider.from_file(path)
    if kind == "openai":
        return OpenAIProvider(
            base_url=settings.model_base_url,
            api_key=api_key(settings),
            timeout_s=settings.model_timeout_s,
            max_attempts=settings.model_max_attempts,
            retry_budget_s=settings.model_retry_budget_s,
            stream=settings.model_stream,
        )
    raise ConfigError(f"unknown model provider {kind!r}; use scripted or openai")


def providers_for(settings: Settings) -> Callable[[AgentSpec], Provider]:
    """The provider for each session's `agent:` block: its own scripted turns,
    else the kind it names (default: the settings'). The worker's agent loop
    and the chat REPL both use it."""

    def make(spec: AgentSpec) -> Provider:
        kind = spec.provider or settings.model_provider
        if kind == "scripted" and spec.turns is not None:
            return ScriptedProvider(list(spec.turns), model=spec.model or "scripted")
        return make_provider(settings, provider=kind)

    return make


def api_key(settings: Settings, *, reader: str = "provider:openai") -> str | None:
    """The key, through the secret store (orchestrator.config.secrets): the setting,
    its file, secrets_dir/model_api_key, the keychain or Vault, as
    `secret_sources` lists them. The read is recorded (SecretAccessed);
    the value is never logged."""
    from orchestrator.config.secrets import SecretStore

    found = SecretStore(settings).get("model_api_key", reader=reader)
    return found.get_secret_value() if found is not None else None

"""The worker's composition root: what every task of this process works with.

Built once per worker process (after the fork: a database engine does not
survive one), from the settings the app was configured with (`tasks.app`). Tasks take the
store, the runner, the agent loop and plain settings values from `deps()`
instead of reading the settings each time, so below this module nothing
calls `get_settings()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import cast

from events.store import EventStore, SqlEventStore
from orchestrator.agent.loop import AgentLoop
from orchestrator.agent.providers.factory import api_key, providers_for
from orchestrator.audit import protect
from orchestrator.config.settings import Settings
from orchestrator.ops import metrics
from orchestrator.run.recording import PatientStore, Spool
from orchestrator.run.runner import Runner
from tasks import app as app_module


@dataclass
class WorkerDeps:
    """The object graph of one worker process."""

    settings: Settings

    @cached_property
    def spool(self) -> Spool:
        """Where results wait through a store outage (tasks.recording); its
        folder resolved once: each step task looks into it first."""
        return Spool(self.settings.state / "spool")

    @cached_property
    def store(self) -> EventStore:
        """The event store, its filters (masking, sealing) in place; a step's
        finished result outlasts an outage of it (orchestrator.run.recording)."""
        s = self.settings
        return cast(
            EventStore,
            PatientStore(
                SqlEventStore(s.effective_store_url, filters=protect.event_filters(s)),
                self.spool,
                s.record_patience_s,
            ),
        )

    @cached_property
    def runner(self) -> Runner:
        return Runner(
            self.store,
            self.settings.worker_actor,
            observer=metrics.OBSERVER,
            settings=self.settings,
        )

    @cached_property
    def loop(self) -> AgentLoop:
        s = self.settings
        key = api_key(s)
        return AgentLoop(
            self.runner,
            providers_for(s),
            default_provider=s.model_provider,
            default_model=s.model_name,
            secrets=(key,) if key else (),
            store_content=s.prompt_storage == "masked",
        )

    @property
    def signing(self) -> bool:
        """Whether chains end with a digest: an audit key is configured."""
        return self.settings.audit_key_file is not None


_deps: tuple[int, WorkerDeps] | None = None


def deps() -> WorkerDeps:
    """This process's dependencies, built on first use after a fork."""
    global _deps
    if _deps is None or _deps[0] != os.getpid():
        _deps = (os.getpid(), WorkerDeps(app_module.settings))
    return _deps[1]

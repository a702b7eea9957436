"""The CLI's composition root: settings, store and dispatcher, built once per
command.

The main callback (`main._global_options`) calls `begin()` after applying
`--config`; each command then asks `current()` for what it needs. Settings
are read here and nowhere below; the Celery dispatcher is named through
`orchestrator.service.dispatch.celery_dispatcher` (orchestrator/ never imports
`tasks/`), built only by the commands that send work.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from rich.console import Console

from orchestrator import lazy
from orchestrator.config.settings import Settings, get_settings
from orchestrator.ops import workers
from orchestrator.service.dispatch import Dispatcher, celery_dispatcher

if TYPE_CHECKING:
    from events.store import EventStore

# SQLAlchemy is imported by the commands that open a store, not by `--help`.
_store = lazy.module("events.store")
_secrets = lazy.module("orchestrator.config.secrets")
_protect = lazy.module("orchestrator.audit.protect")


class Root:
    """What one command works with. Attributes are built on first use, so a
    command that needs no store opens none."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings

    @cached_property
    def settings(self) -> Settings:
        s = self._settings if self._settings is not None else get_settings()
        _secrets.install(s)  # error messages and log lines mask its secrets
        return s

    def store(self, *, for_writing: bool = False) -> EventStore:
        """The configured store. The embedded SQLite store is migrated on first
        use; a server store must be upgraded explicitly (`orchestrator db upgrade`)."""
        s = self.settings
        return _store.open_store(
            s.effective_store_url,
            upgrade=s.embedded_store and for_writing,
            filters=_protect.event_filters(s),
        )

    @cached_property
    def dispatcher(self) -> Dispatcher:
        return celery_dispatcher(self.settings)

    def ensure_worker(self, err: Console) -> Any:
        """A running worker is used, else one is started (its process, or None);
        `run`, `approve --wait`, `chat`, `diagnose` and `smoke` all go through here."""
        s = self.settings
        if s.embedded_broker:
            if workers.embedded_worker_pid(s) is not None:
                return None
        elif workers.server_worker_running(self.dispatcher.ping):
            return None
        err.print(f"[dim]starting a worker (log: {workers.logfile(s)})[/]")
        return workers.start_worker(s)


_current: Root | None = None


def begin(settings: Settings | None = None) -> Root:
    """A fresh root for the command about to run (the main callback's call)."""
    global _current
    _current = Root(settings)
    return _current


def current() -> Root:
    """The running command's root (one is made when a group runs on its own)."""
    return _current if _current is not None else begin()

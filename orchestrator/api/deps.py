"""What routes share: the settings, the store and the dispatcher (opened on first use, so
/healthz does no I/O), the token table, and the `need(capability)`
dependency that authenticates the caller."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from events.store import EventStore, open_store
from orchestrator.api.auth import CAPABILITIES, Principal, TokenTable
from orchestrator.audit import protect
from orchestrator.config.settings import Settings
from orchestrator.service.dispatch import Dispatcher, celery_dispatcher

_bearer = HTTPBearer(auto_error=False, description="A token from `orchestrator api token`")


class Services:
    """The API's object graph, built by `create_app`. `dispatcher` makes the
    Dispatcher the routes enqueue on (default: the Celery one, built on the
    first route that sends work, so serving /healthz never imports Celery)."""

    def __init__(
        self,
        settings: Settings,
        dispatcher: Callable[[Settings], Dispatcher] = celery_dispatcher,
    ) -> None:
        self.settings = settings
        self.tokens = TokenTable.from_settings(settings)
        self._store: EventStore | None = None
        self._make_dispatcher = dispatcher
        self._dispatcher: Dispatcher | None = None
        self._lock = threading.Lock()

    @property
    def dispatcher(self) -> Dispatcher:
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = self._make_dispatcher(self.settings)
        return self._dispatcher

    @property
    def store(self) -> EventStore:
        """The configured store. The embedded SQLite store is migrated on
        first use, as the CLI does; a server store must be upgraded already."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    s = self.settings
                    self._store = open_store(
                        s.effective_store_url,
                        upgrade=s.embedded_store,
                        filters=protect.event_filters(s),
                    )
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    challenge = {"WWW-Authenticate": 'Bearer realm="orchestrator"'}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            401,
            "this route needs an Authorization header with a bearer "
            "token; make one with `orchestrator api token` (docs/api.md)",
            challenge,
        )
    principal = services(request).tokens.find(credentials.credentials)
    if principal is None:
        raise HTTPException(
            401,
            "the bearer token is not one this server knows (check api_tokens in the configuration)",
            challenge,
        )
    return principal


def need(capability: str) -> Callable[..., Principal]:
    """A dependency: the caller, if a token of theirs has a role allowing
    `capability`; else 401 (no or unknown token) or 403 (wrong role)."""
    allowed = sorted(CAPABILITIES[capability] | {"admin"})

    def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> Principal:
        principal = authenticate(request, credentials)
        if not principal.may(capability):
            raise HTTPException(
                403,
                f"{principal.actor} has role(s) "
                f"{', '.join(sorted(principal.roles))}; this needs one of "
                f"{', '.join(allowed)}",
            )
        return principal

    dependency.__name__ = f"need_{capability}"
    return dependency


def optional_metrics_auth(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> Any:
    if services(request).settings.api_metrics_public:
        return None
    return need("metrics")(request, credentials)

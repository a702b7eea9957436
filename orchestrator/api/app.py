"""The HTTP API's application: `create_app(settings)`.

Like the CLI, this is a composition root: `create_app` builds the services
(settings, store, dispatcher) once, and routes call the application layer
(`orchestrator.service.workflows`) with them; the Celery dispatcher is named
through `orchestrator.service.dispatch`, never imported from `tasks/`. `orchestrator api` serves it with uvicorn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from orchestrator.api import confirmations, jobs, ops, problems, sessions
from orchestrator.api.deps import Services
from orchestrator.config import secrets
from orchestrator.config.settings import Settings, get_settings
from orchestrator.service.dispatch import Dispatcher, celery_dispatcher

DESCRIPTION = """Submit batch refactor jobs, follow their sessions' events, answer
confirmations, and replay or verify the hash-chained audit log.

Every route but /healthz and /readyz (and /metrics when `api_metrics_public`)
needs `Authorization: Bearer <token>`; the token's roles decide what it may do
(docs/api.md). Errors are `{"error", "detail", "problems"}` with the CLI's
messages: 400/404/409/422 bad input, 401/403 authentication and roles,
413 a body over the limit, 503 the store or broker is unavailable."""


def create_app(
    settings: Settings, dispatcher: Callable[[Settings], Dispatcher] = celery_dispatcher
) -> FastAPI:
    """The API for one configuration. The store is opened on the first request
    that needs it; token secrets are read now (a missing one fails at start)."""
    secrets.install(settings)  # problem details mask its secrets
    svc = Services(settings, dispatcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        svc.close()

    app = FastAPI(
        title="orchestrator", version=_version(), description=DESCRIPTION, lifespan=lifespan
    )
    app.state.services = svc
    problems.install(app)
    app.add_middleware(problems.BodyLimit, limit=settings.api_max_body_bytes)
    for module in (jobs, sessions, confirmations, ops):
        app.include_router(module.router)
    return app


def _version() -> str:
    try:
        return version("agent-orchestrator")
    except PackageNotFoundError:
        return "0"


def from_environment() -> FastAPI:
    """The factory `uvicorn --factory` calls in each of its worker processes."""
    return create_app(get_settings())

"""/healthz, /readyz and /metrics: for load balancers, probes and scrapers.

Liveness does no I/O. Readiness is `orchestrator.ops.health.readiness` (broker,
store and migrations, a fresh worker heartbeat), the same verdict `health`
and `smoke` give; 503 names the check that failed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from orchestrator.api.deps import optional_metrics_auth, services
from orchestrator.api.schemas import Liveness, Readiness, error_responses
from orchestrator.api.strict import StrictRoute
from orchestrator.errors import InfraUnavailable
from orchestrator.ops import health
from orchestrator.ops import metrics as metrics_mod

router = APIRouter(tags=["operations"], route_class=StrictRoute)


@router.get("/healthz", response_model=Liveness)
def healthz() -> dict[str, Any]:
    """The process answers (no store, broker or worker is asked)."""
    return health.liveness()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "Not ready: `failed` names the checks, each with what to do",
        }
    },
)
def readyz(request: Request) -> JSONResponse:
    """Whether work submitted now would run: broker, store (reachable and
    migrated) and at least one worker with a fresh heartbeat."""
    report = health.readiness(services(request).settings)
    return JSONResponse(report.to_json(), status_code=200 if report.ok else 503)


@router.get(
    "/metrics",
    responses={
        **error_responses(401, 403, 503),
        200: {
            "description": "Prometheus text exposition",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
    },
)
def metrics(request: Request, _: Any = Depends(optional_metrics_auth)) -> Response:
    """Prometheus metrics of the API and (multiprocess) workers on this host;
    needs a token of any role unless api_metrics_public."""
    try:
        exposition = metrics_mod.exposition
    except AttributeError as exc:
        raise InfraUnavailable(f"metrics are not available in this installation ({exc})") from None
    body, content_type = exposition(services(request).settings)
    return Response(body, media_type=content_type)

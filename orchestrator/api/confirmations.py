"""/confirmations: what waits for an operator, and answering it.

Answering is the code path of `orchestrator approve/deny`: find the waiting
request, record ConfirmationGranted or ConfirmationDenied under the call's
idempotency key (two operators at once record one answer; the second gets
409), then enqueue the session's continuation (the application's `workflows.answer`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam

from orchestrator.api.auth import Principal
from orchestrator.api.deps import need, services
from orchestrator.api.schemas import CALL_ID_PATTERN, Answer, Answered, Waiting, error_responses
from orchestrator.api.strict import StrictRoute
from orchestrator.errors import Conflict
from orchestrator.run import confirmations
from orchestrator.service import workflows

router = APIRouter(tags=["confirmations"], route_class=StrictRoute)
CallId = Annotated[
    str,
    PathParam(
        description="A confirmation's call id (GET /confirmations,"
        " `<session>/<turn>`), or a unique prefix of it",
        pattern=CALL_ID_PATTERN,
    ),
]


@router.get(
    "/confirmations", response_model=list[Waiting], responses=error_responses(401, 403, 503)
)
def list_waiting(
    request: Request, who: Principal = Depends(need("answer"))
) -> list[dict[str, Any]]:
    """Every confirmation that waits for an answer, oldest first (`orchestrator
    pending --json`)."""
    return [w.to_json() for w in confirmations.pending(services(request).store)]


@router.post(
    "/confirmations/{call_id:path}",
    response_model=Answered,
    responses=error_responses(400, 401, 403, 404, 409, 413, 422, 503),
)
def answer(
    call_id: CallId, body: Answer, request: Request, who: Principal = Depends(need("answer"))
) -> dict[str, Any]:
    """Approve exactly that one request, or deny it (its step fails), and
    continue the session on the workers."""
    svc = services(request)
    w = confirmations.find(svc.store, call_id)
    done = workflows.answer(
        svc.store,
        svc.dispatcher,
        w,
        grant=body.decision == "approve",
        by=who.actor,
        reason=body.reason,
    )
    if not done.ours:
        raise Conflict(
            f"{w.call_id} was answered by someone else first; see GET "
            f"/sessions/{w.session_id}/replay"
        )
    return {
        "call_id": w.call_id,
        "decision": body.decision,
        "by": who.actor,
        "session_id": w.session_id,
        "job_id": w.job_id,
        "continues_from": done.continues_from,
    }

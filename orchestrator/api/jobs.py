"""/jobs: submit a job spec, see where it stands, collect its patches, cancel it.

A submitted spec goes through the same validation as `orchestrator submit`
(`jobspec.parse_spec`), then the same application workflow
(`workflows.submit`: prepare, record, enqueue on the dispatcher): workers
run it, the API never does.

Targets resolve against `api_workspace_root`, and every target must stay
inside it: an absolute path elsewhere, a `~` or a `..` that leaves it, or a
symlink leading out, is a 422 naming the target. A client therefore never
makes the server read a folder the operator did not put under the root.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from orchestrator.api.auth import Principal
from orchestrator.api.deps import Services, need, services
from orchestrator.api.schemas import (
    ID_PATTERN,
    Cancelled,
    CancelRequest,
    JobStatus,
    Patches,
    Submitted,
    error_responses,
)
from orchestrator.api.strict import QueryBool, StrictRoute
from orchestrator.errors import NotFound, SpecError, UserError
from orchestrator.guard.policy import TIERS, load_policy
from orchestrator.run.jobspec import parse_spec
from orchestrator.run.runner import Ticket
from orchestrator.run.spec_input import check_size, json_duplicate_keys
from orchestrator.run.watch import final_view, session_summary
from orchestrator.service import workflows

router = APIRouter(tags=["jobs"], route_class=StrictRoute)
JobId = Annotated[str, PathParam(pattern=ID_PATTERN, description="A job id from POST /jobs")]
SOURCE = "request body"
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")


def _spec_text(raw: bytes, content_type: str) -> tuple[str, bool]:
    """The spec as YAML text, and whether it came as JSON (whose positions,
    counted in our re-rendering, would mislead)."""
    kind = content_type.split(";")[0].strip().lower()
    if kind not in ("application/json", "", *YAML_TYPES):
        raise HTTPException(
            415, f"a job spec is sent as application/json or application/yaml, not {kind}"
        )
    check_size(len(raw), SOURCE)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(SOURCE, [f"the body is not UTF-8 text (byte {exc.start})"]) from None
    if kind == "application/json":
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise SpecError(SOURCE, [f"the body is not JSON: {exc}"]) from None
        duplicates = json_duplicate_keys(raw)
        if duplicates:
            raise SpecError(SOURCE, duplicates)
        # JSON is read through the YAML path, so every message is the CLI's;
        # re-rendered first because JSON allows tabs where YAML does not.
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode(), True
    return text, False


def _inside(root: Path, spec: Any) -> None:
    """Refuse targets that leave the workspace root (before resolving any)."""
    problems = []
    for i, entry in enumerate(spec.targets):
        why = None
        if entry.startswith("~"):
            why = "`~` is not allowed over HTTP; give a path relative to the workspace root"
        else:
            joined = os.path.normpath(os.path.join(root, entry))
            if not Path(joined).is_relative_to(root):
                why = f"resolves outside the API workspace root {root}"
        if why:
            problems.append(f"targets[{i}]: {entry!r} {why}")
    if spec.agent is not None and spec.agent.script is not None:
        problems.append(
            "agent.script: a script file cannot be read over HTTP; give the "
            "turns inline (`agent.turns`)"
        )
    if problems:
        raise SpecError(SOURCE, problems)


def submit(
    svc: Services,
    raw: bytes,
    content_type: str,
    who: Principal,
    tier: str | None,
    allow_destructive: bool,
) -> Submitted:
    s = svc.settings
    if s.api_workspace_root is None:
        raise UserError(
            "this server takes no jobs: api_workspace_root is not configured "
            "(set ORCH_API_WORKSPACE_ROOT to the folder targets live under)"
        )
    root = Path(os.path.realpath(s.api_workspace_root.expanduser()))
    text, from_json = _spec_text(raw, content_type)
    try:
        spec = parse_spec(text, SOURCE, size=len(raw))
    except SpecError as exc:
        if from_json:  # positions count lines of our rendering: drop them
            raise SpecError(SOURCE, [_no_position(p) for p in exc.problems]) from None
        raise
    _inside(root, spec)
    if tier is not None and tier not in TIERS:
        raise SpecError(
            SOURCE, [f"tier (query): {tier!r} is not a tier; use one of {', '.join(TIERS)}"]
        )

    def vet(tickets: list[Ticket]) -> None:
        escaped = [
            f"targets: {t.target!r} leads outside the API workspace root {root} (through a symlink)"
            for t in tickets
            if t.path is not None and not Path(t.path).is_relative_to(root)
        ]
        if escaped:
            raise SpecError(SOURCE, escaped)

    job_id, tickets = workflows.submit(
        svc.store,
        svc.dispatcher,
        spec,
        root,
        actor=who.actor,
        policy_files=[load_policy(s.policy_file).doc] if s.policy_file else [],
        tier=tier or s.tier,  # type: ignore[arg-type]
        elevated_by=who.actor if allow_destructive else None,
        vet=vet,
    )
    return Submitted(
        job_id=job_id,
        name=spec.name,
        sessions=[
            {"session_id": t.session_id, "target": t.target, "path": t.path, "error": t.error}
            for t in tickets
        ],
    )


def _no_position(problem: str) -> str:
    return re.sub(r" \(line \d+, column \d+\)", "", problem, count=1)


@router.post(
    "/jobs",
    status_code=201,
    response_model=Submitted,
    responses=error_responses(400, 401, 403, 413, 415, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/yaml": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def post_job(
    request: Request,
    who: Principal = Depends(need("submit")),
    tier: str | None = Query(
        None, description="read-only | read-write | exec: the highest tier this job gets"
    ),
    allow_destructive: Annotated[
        QueryBool,
        Query(
            description="Run destructive operations without confirmation (operators only; "
            "recorded with your identity)"
        ),
    ] = False,
) -> Submitted:
    """Submit a job spec (docs/jobs: the YAML `orchestrator submit` reads, or
    the same as JSON); workers run it. 422 lists each problem with its field."""
    if allow_destructive and not who.may("elevate"):
        raise HTTPException(
            403, f"{who.actor} may not pass allow_destructive; it needs the operator or admin role"
        )
    raw = await request.body()
    svc = services(request)
    return await run_in_threadpool(
        submit, svc, raw, request.headers.get("content-type", ""), who, tier, allow_destructive
    )


def _view(svc: Services, job_id: str) -> Any:
    view = final_view(svc.store, job_id)
    if not view.job.sessions:
        raise NotFound(f"no job {job_id}; check the id (from POST /jobs)")
    return view


@router.get(
    "/jobs/{job_id}", response_model=JobStatus, responses=error_responses(401, 403, 404, 422, 503)
)
def get_job(
    job_id: JobId, request: Request, who: Principal = Depends(need("read_jobs"))
) -> dict[str, Any]:
    """Where a job stands: each target's status, steps and files changed (the
    JSON of `orchestrator status --json`, plus `cancel` once requested)."""
    view = _view(services(request), job_id)
    job = view.job
    return {
        "job_id": job_id,
        "name": job.name,
        "status": job.outcome,
        "cancel": {"by": job.cancelled_by, "reason": job.cancel_reason}
        if job.cancelled_by
        else None,
        "sessions": [{k: v for k, v in r.items() if k != "patch"} for r in session_summary(view)],
    }


@router.get(
    "/jobs/{job_id}/patches",
    response_model=Patches,
    responses=error_responses(401, 403, 404, 422, 503),
)
def get_patches(
    job_id: JobId, request: Request, who: Principal = Depends(need("read_jobs"))
) -> dict[str, Any]:
    """One unified diff per target (what `orchestrator run --out` writes)."""
    rows = session_summary(_view(services(request), job_id))
    return {
        "job_id": job_id,
        "patches": [
            {
                "session_id": r["session_id"],
                "target": r["target"],
                "status": r["status"],
                "files_changed": r["files_changed"],
                "patch": r["patch"],
            }
            for r in rows
        ],
    }


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=Cancelled,
    responses=error_responses(401, 403, 404, 409, 413, 422, 503),
)
def cancel_job(
    job_id: JobId,
    request: Request,
    body: CancelRequest = Body(default_factory=CancelRequest),
    who: Principal = Depends(need("cancel")),
) -> dict[str, Any]:
    """Stop a job: a running shell step is killed within a few seconds and
    each session ends with "cancelled by <you>: <reason>"; sessions waiting
    for a confirmation end now; the job ends `cancelled`. 409 when the job
    already ended."""
    done = workflows.cancel(services(request).store, job_id, by=who.actor, reason=body.reason)
    return done.to_json()

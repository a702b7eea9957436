"""Request and response models of the HTTP API (they make /openapi.json).

The JSON matches the CLI's `--json` output where there is one (`status`,
`audit replay`, `audit verify`, `pending`): the models here describe the
top level, and nested data the CLI documents in docs/schemas/ stays open.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
CALL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,191}$"  # `<session id>/<turn>`


class Problem(BaseModel):
    field: str
    reason: str
    at: str | None = None


class ErrorBody(BaseModel):
    error: str = Field(description="The error's type, e.g. SpecError, NotFound")
    detail: str = Field(description="What happened and what to do (the CLI's message)")
    problems: list[Problem] | None = None


class SessionTicket(BaseModel):
    session_id: str
    target: str
    path: str | None
    error: str | None = None


class Submitted(BaseModel):
    job_id: str
    name: str
    sessions: list[SessionTicket]


class SessionRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    session_id: str
    target: str
    status: str
    error: str | None = None


class Cancel(BaseModel):
    by: str
    reason: str


class JobStatus(BaseModel):
    job_id: str
    name: str
    status: Literal["new", "running", "completed", "failed", "cancelled"]
    cancel: Cancel | None = Field(default=None, description="Set once a cancel was requested")
    sessions: list[SessionRow]


class Patch(BaseModel):
    session_id: str
    target: str
    status: str
    files_changed: list[str]
    patch: str = Field(description="Unified diff of the session's changes ('' if none)")


class Patches(BaseModel):
    job_id: str
    patches: list[Patch]


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no coercion: 422 names the field
    reason: str = Field(default="", max_length=2000)


class Cancelled(BaseModel):
    job_id: str
    cancelled_by: str
    reason: str
    first_request: bool = Field(
        description="False when someone had asked already (their request is the one shown)"
    )
    stopped: list[str] = Field(description="Sessions ended now (they waited for a confirmation)")
    running: list[str] = Field(description="Sessions workers end before their next step")


class EventPage(BaseModel):
    session_id: str
    events: list[dict[str, Any]] = Field(
        description="Events as exported (envelope, payload, prev_hash, hash), in seq order"
    )
    next_after_seq: int = Field(description="Pass as after_seq for the next page")
    more: bool = Field(description="Whether events after this page exist already")
    finished: bool = Field(description="Whether the session has ended")


class Waiting(BaseModel):
    model_config = ConfigDict(extra="allow")
    call_id: str
    session_id: str
    job_id: str
    tool: str
    rule_id: str
    reason: str


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    decision: Literal["approve", "deny"]
    reason: str = Field(default="", max_length=2000)


class Answered(BaseModel):
    call_id: str
    decision: Literal["approve", "deny"]
    by: str
    session_id: str
    job_id: str
    continues_from: str = Field(description="Where the session goes on: a step, or its agent")


class Check(BaseModel):
    name: str
    ok: bool
    detail: str
    remedy: str = ""


class Readiness(BaseModel):
    ok: bool
    failed: list[str]
    checks: list[Check]


class Liveness(BaseModel):
    ok: bool


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give."""
    words = {
        400: "Bad input",
        401: "No or unknown bearer token",
        403: "The token's roles do not allow this",
        404: "No such id",
        409: "Too late for this (already answered or ended)",
        413: "Body over api_max_body_bytes",
        415: "Body type not accepted",
        422: "Input that does not validate, each field with its reason",
        503: "Store or broker unavailable",
    }
    return {c: {"model": ErrorBody, "description": words[c]} for c in codes}

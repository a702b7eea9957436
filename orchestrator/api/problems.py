"""Errors as HTTP answers: one place maps the error families to status codes.

The codes follow the CLI's exit codes (DESIGN.md, conventions): bad input 2
-> 400/404/409/422, denied by policy 3 -> 403, infrastructure 4 -> 503. The
body is always `{"error": <type>, "detail": <the message the CLI prints>,
"problems": [{"field", "reason"}...]}`, masked like everything that leaves
the process. A request body too large is refused by `BodyLimit` before any
of it is read.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as KombuOperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from events.errors import EventError, SchemaNotReady, SequenceConflict, StoreUnavailable
from orchestrator.config import secrets
from orchestrator.errors import (
    Conflict,
    InfraUnavailable,
    NotFound,
    OrchestratorError,
    PolicyDenied,
    SpecError,
    UserError,
)
from orchestrator.guard.masking import mask
from orchestrator.run.spec_input import field_name

__all__ = ["problem", "status_of", "install", "BodyLimit", "spec_problems"]


def known_secrets() -> tuple[str, ...]:
    """The secret values this service knows, when the secret store can say."""
    try:
        return tuple(secrets.known_values())
    except Exception:  # noqa: BLE001  (no store configured, or none in this release)
        return ()


def problem(
    status: int,
    error: str,
    detail: str,
    problems: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    secrets = known_secrets()
    body: dict[str, Any] = {"error": error, "detail": mask(detail, secrets)}
    if problems is not None:
        body["problems"] = [{k: mask(v, secrets) for k, v in p.items()} for p in problems]
    return JSONResponse(body, status_code=status, headers=headers)


def status_of(exc: BaseException) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, (Conflict, SequenceConflict)):
        return 409
    if isinstance(exc, SpecError):
        return 422
    if isinstance(exc, UserError):
        return 400
    if isinstance(exc, PolicyDenied):
        return 403
    if isinstance(exc, (InfraUnavailable, StoreUnavailable, SchemaNotReady)):
        return 503
    if isinstance(exc, (OrchestratorError, EventError)) and getattr(exc, "exit_code", 0) == 4:
        return 503
    return 500


# "steps[0].kind (line 3, column 5): unknown step kind" -> field, at, reason
_SPEC_PROBLEM = re.compile(
    r"^(?P<field>[^\s(]+|\(top level\))"
    r"(?: \((?P<at>line \d+, column \d+)\))?: (?P<reason>.*)$",
    re.S,
)


def spec_problems(exc: SpecError, *, positions: bool = True) -> list[dict[str, str]]:
    """Each problem of a job spec as {field, reason[, at]}; problems with no
    field (YAML syntax) name the field `body`."""
    out = []
    for text in exc.problems:
        m = _SPEC_PROBLEM.match(text)
        if m is None:
            out.append({"field": "body", "reason": text})
            continue
        item = {"field": m["field"], "reason": m["reason"]}
        if m["at"] and positions:
            item["at"] = m["at"]
        out.append(item)
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(SpecError)
    async def _spec(request: Request, exc: SpecError) -> JSONResponse:
        return problem(422, "SpecError", str(exc), spec_problems(exc))

    @app.exception_handler(OrchestratorError)
    async def _orchestrator(request: Request, exc: OrchestratorError) -> JSONResponse:
        return problem(status_of(exc), type(exc).__name__, str(exc))

    @app.exception_handler(EventError)
    async def _event(request: Request, exc: EventError) -> JSONResponse:
        return problem(status_of(exc), type(exc).__name__, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": field_name(tuple(map(_part, e["loc"]))), "reason": e["msg"]}
            for e in exc.errors()
        ]
        return problem(
            422,
            "RequestInvalid",
            "the request does not validate: "
            + "; ".join(f"{p['field']}: {p['reason']}" for p in problems),
            problems,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = {
            401: "Unauthorized",
            403: "Forbidden",
            404: "NotFound",
            405: "MethodNotAllowed",
            413: "BodyTooLarge",
            415: "UnsupportedMediaType",
        }.get(exc.status_code, "HTTPError")
        return problem(
            exc.status_code, error, str(exc.detail), headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if _unreachable(exc):
            return problem(
                503,
                "InfraUnavailable",
                f"broker unavailable: {exc}. Check ORCH_BROKER_URL and that the broker is running.",
            )
        return problem(
            500,
            "InternalError",
            f"{type(exc).__name__}: {exc}. This is a bug; the server log has the traceback.",
        )


def _part(part: Any) -> str | int:
    return part if isinstance(part, int) else str(part)


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, (KombuOperationalError, ConnectionError))


class _TooLarge(StarletteHTTPException):
    """Raised from `receive` inside the route: an HTTPException, so FastAPI's
    body parsing passes it on (it turns other errors into 400) and the
    handler above answers 413."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, before the route
    reads it. A Content-Length over the limit is refused unread; a chunked
    body is counted as it arrives and refused once it passes the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._refuse(send, 400, "RequestInvalid", "Content-Length is not a number")
                return
            if size > self.limit:
                await self._refuse(send, 413, "BodyTooLarge", self._why(size))
                return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self._why(seen))
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await self._refuse(send, 413, "BodyTooLarge", self._why(seen))

    def _why(self, size: int) -> str:
        return (
            f"the request body has {size} bytes or more, over the limit of {self.limit} "
            "(api_max_body_bytes); split the job or raise the limit"
        )

    @staticmethod
    async def _refuse(send: Send, status: int, error: str, detail: str) -> None:
        body = orjson.dumps({"error": error, "detail": detail})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

"""/sessions and /audit: a session's state, its events (a page at a time, or
followed live as Server-Sent Events), its replay, and the verified log.

Following polls the session's stream tail every `api_sse_poll_s` (one
indexed query, usually empty) in a worker thread, and stops when the session
has ended and everything up to its end was sent, or when the client leaves
(checked between polls, so an abandoned stream costs at most one more query).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from events import audit as whole
from events import payloads as p
from events import verify as verify_mod
from events.envelope import Event
from events.history import history, replay_json
from events.replay import replay
from orchestrator.api.auth import Principal
from orchestrator.api.deps import Services, need, services
from orchestrator.api.schemas import ID_PATTERN, EventPage, error_responses
from orchestrator.api.strict import QueryBool, QueryInt, StrictRoute
from orchestrator.audit import digests as audit
from orchestrator.errors import NotFound

router = APIRouter(tags=["sessions", "audit"], route_class=StrictRoute)
SessionId = Annotated[
    str, PathParam(pattern=ID_PATTERN, description="A session id (GET /jobs/{id} lists them)")
]
ENDS = (p.SessionCompleted, p.SessionFailed)
KEEPALIVE_S = 15.0
MAX_SEQ = 2**53


def _known(svc: Services, session_id: str) -> bool:
    """A session with no events yet may still be one a job listed (its first
    step not run yet): following it then waits for its first events."""
    if svc.store.last_seq(session_id):
        return True
    return any(
        ref.session_id == session_id
        for e in svc.store.read_types(("JobSubmitted",))
        for ref in e.payload.sessions
    )  # type: ignore[union-attr]


def _session(svc: Services, session_id: str) -> Any:
    """The session's whole history (`events.history`): its calls, files and patch."""
    state = history(svc.store, session_id)
    if state.last_seq == 0 or not state.session.session_id:
        raise NotFound(f"no session {session_id}; GET /jobs/{{id}} lists a job's sessions")
    return state


@router.get("/sessions/{session_id}", responses=error_responses(401, 403, 404, 422, 503))
def get_session(
    session_id: SessionId, request: Request, who: Principal = Depends(need("read_audit"))
) -> dict[str, Any]:
    """The session's state rebuilt from its events (the `session` part of
    `orchestrator audit replay --json`)."""
    data: dict[str, Any] = replay_json(_session(services(request), session_id))["session"]
    return data


@router.get("/sessions/{session_id}/replay", responses=error_responses(401, 403, 404, 422, 503))
def get_replay(
    session_id: SessionId, request: Request, who: Principal = Depends(need("read_audit"))
) -> dict[str, Any]:
    """State, quota usage and permission ledger rebuilt from the events alone,
    folding every event from seq 1 (the JSON of `orchestrator audit replay
    --no-snapshot --json`; docs/schemas/audit-replay.schema.json)."""
    svc = services(request)
    _session(svc, session_id)
    return replay_json(history(svc.store, session_id))


def _page(events: list[Event], limit: int) -> tuple[list[dict[str, Any]], bool]:
    return [e.to_record() for e in events[:limit]], len(events) > limit


def _sse(e: Event) -> bytes:
    return (
        f"id: {e.seq}\nevent: {e.type}\n".encode()
        + b"data: "
        + orjson.dumps(e.to_record())
        + b"\n\n"
    )


@router.get(
    "/sessions/{session_id}/events",
    response_model=EventPage,
    responses={
        **error_responses(401, 403, 404, 422, 503),
        200: {
            "description": "A page of events; with `Accept: text/event-stream` or "
            "follow=true, a Server-Sent Events stream (one `event: <type>` per event, "
            "`id` its seq, then `event: end` once the session has ended)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def get_events(
    session_id: SessionId,
    request: Request,
    after_seq: Annotated[
        QueryInt, Query(ge=0, le=MAX_SEQ, description="Only events after this seq")
    ] = 0,
    limit: Annotated[QueryInt, Query(ge=1, le=1000, description="Page size")] = 100,
    follow: Annotated[
        QueryBool,
        Query(description="Stream live (SSE) until the session ends or you disconnect"),
    ] = False,
    accept: str = Header("application/json", include_in_schema=False),
    last_event_id: str | None = Header(None, include_in_schema=False),
    who: Principal = Depends(need("read_audit")),
) -> Any:
    """A session's events in seq order: a page (`after_seq`, `limit`, then
    `next_after_seq` as the cursor), or followed live as Server-Sent Events."""
    svc = services(request)
    streaming = follow or "text/event-stream" in accept
    if streaming and last_event_id is not None and last_event_id.isdigit():
        after_seq = max(after_seq, min(int(last_event_id), MAX_SEQ))  # an SSE reconnect
    if not await run_in_threadpool(_known, svc, session_id):
        raise NotFound(f"no session {session_id}; GET /jobs/{{id}} lists a job's sessions")
    if not streaming:

        def page() -> dict[str, Any]:
            events = list(svc.store.read_stream(session_id, after_seq))
            finished = any(isinstance(e.payload, ENDS) for e in events) or (
                not events and after_seq > 0 and _session(svc, session_id).session.finished
            )
            records, more = _page(events, limit)
            return {
                "session_id": session_id,
                "events": records,
                "more": more,
                "next_after_seq": records[-1]["seq"] if records else after_seq,
                "finished": finished,
            }

        return await run_in_threadpool(page)
    return StreamingResponse(
        _follow(request, svc, session_id, after_seq),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _follow(
    request: Request, svc: Services, session_id: str, after: int
) -> AsyncIterator[bytes]:
    def ended_before() -> bool:
        return bool(after) and replay(svc.store, session_id).session.finished

    finished = await run_in_threadpool(ended_before)
    quiet_since = time.monotonic()
    yield b"retry: 2000\n\n"
    while True:
        events = await run_in_threadpool(lambda: list(svc.store.read_stream(session_id, after)))
        for e in events:
            yield _sse(e)
            after = e.seq
            finished = finished or isinstance(e.payload, ENDS)
        if finished:
            yield (
                b"event: end\ndata: "
                + orjson.dumps({"session_id": session_id, "last_seq": after})
                + b"\n\n"
            )
            return
        if events:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_S:
            yield b": keepalive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(svc.settings.api_sse_poll_s)
        if await request.is_disconnected():  # gone: stop polling for them
            return


@router.get("/audit/verify", responses=error_responses(401, 403, 422, 503))
def audit_verify(
    request: Request,
    stream: str | None = Query(None, pattern=ID_PATTERN, description="Only this stream"),
    who: Principal = Depends(need("read_audit")),
) -> dict[str, Any]:
    """Every hash chain, sequence and stream boundary, and the signed digests
    of stream heads: the JSON of `orchestrator audit verify --json` (200 with
    `ok: false` when something does not verify)."""
    svc = services(request)
    trusted = audit.trusted_keys(svc.settings, [])
    report = whole.verify_store(svc.store, stream)
    proof = audit.prove_store(svc.store, trusted, [], stream)
    return {**report.to_json(), "proof": proof.to_json()}


@router.get(
    "/audit/export",
    responses={
        **error_responses(401, 403, 422, 503),
        200: {
            "description": "JSONL: one event a line, then a manifest line (`audit verify --input` "
            "checks it)",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
    },
)
def audit_export(
    request: Request,
    stream: str | None = Query(
        None, pattern=ID_PATTERN, description="Only this session or job stream"
    ),
    who: Principal = Depends(need("read_audit")),
) -> StreamingResponse:
    """The events as `orchestrator audit export` writes them."""
    st = services(request).store
    rows = st.raw_stream_rows(stream) if stream else st.raw_all()

    def lines() -> Iterator[bytes]:
        yield from verify_mod.export_lines(rows)

    return StreamingResponse(lines(), media_type="application/x-ndjson")

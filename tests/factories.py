"""Building events for tests: plain functions, no mocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from events import payloads as p
from events.envelope import Event, NewEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def new(payload: object, i: int = 0, key: str | None = None, corr: str = "job-1") -> NewEvent:
    return NewEvent.create(
        payload,
        actor="test",
        correlation_id=corr,
        idempotency_key=key,
        occurred_at=T0 + timedelta(seconds=i),
    )


def step_payloads(
    turn: int, tool: str = "replace", path: str | None = None, ok: bool = True
) -> list[object]:
    call = f"c{turn}"
    out: list[object] = [
        p.TurnStarted(turn=turn, name=f"step{turn}", kind=tool),
        p.ToolCallRequested(call_id=call, turn=turn, tool=tool, args={"pattern": "x"}),
        p.PermissionDecided(
            call_id=call, decision="allow", rule_id="default-allow", policy_hash="h" * 64
        ),
        p.ToolCallStarted(call_id=call, planned_count=1),
    ]
    if path:
        out.append(
            p.FileChanged(
                call_id=call,
                path=path,
                before_hash="a",
                after_hash="b",
                diff=f"--- a/{path}\n+++ b/{path}\n",
            )
        )
    if ok:
        out.append(
            p.ToolCallCompleted(
                call_id=call,
                tool=tool,
                count=1,
                cpu_s=0.25,
                duration_s=0.5,
                output_bytes=10,
                bytes_written=5,
            )
        )
        out.append(p.TurnCompleted(turn=turn, status="ok"))
    else:
        out.append(
            p.ToolCallFailed(
                call_id=call, tool=tool, error="CommandFailed", message="exit 1", output_bytes=3
            )
        )
        out.append(p.TurnCompleted(turn=turn, status="failed"))
    return out


def session_payloads(turns: int = 3) -> list[object]:
    out: list[object] = [p.SessionStarted(job_id="job-1", target="/w", steps=("a",) * turns)]
    for t in range(1, turns + 1):
        out += step_payloads(t, "shell" if t % 2 else "replace", path=f"f{t}.py", ok=t != 2)
    out.append(p.SessionCompleted(files_changed=turns))
    return out


def place(
    stream_id: str, payloads: list[object], start_position: int = 1, corr: str = "job-1"
) -> list[Event]:
    """Events as the store would return them, built purely (no database)."""
    from events.envelope import genesis_hash, seal
    from events.upcast import decode

    batch = [new(x, i, corr=corr) for i, x in enumerate(payloads)]
    return [
        decode(start_position + i, body, digest)
        for i, (_, body, digest) in enumerate(seal(stream_id, batch, 0, genesis_hash(stream_id)))
    ]


def run_one_step(store: Any, work: Path, step: Any, **ticket: Any) -> tuple[str, str]:
    """One step of a new one-step session on `work` through a real Runner:
    (session id, the step's status). `ticket`: more Ticket fields (policy...)."""
    from events.envelope import new_id
    from orchestrator.run.runner import Runner, Ticket

    sid = new_id()
    t = Ticket(
        job_id=new_id(),
        session_id=sid,
        target="repo",
        path=str(work),
        steps=(step.label,),
        sessions_total=1,
        **ticket,
    )
    return sid, Runner(store, "worker:test").run_step(t, 0, step, last=True)

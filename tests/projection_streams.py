"""Session streams for the projection tests: named ones that reach every
handler and its edge cases, and random valid sessions from a seed."""

from __future__ import annotations

import random

from events import payloads as p
from tests.factories import session_payloads, step_payloads

POLICY_HASH = "p" * 64


def _asked(turn: int, tool: str = "shell") -> list[object]:
    call = f"c{turn}"
    return [
        p.TurnStarted(turn=turn, name=f"step{turn}", kind=tool),
        p.ToolCallRequested(call_id=call, turn=turn, tool=tool, args={"command": ["rm", "x"]}),
        p.PermissionDecided(
            call_id=call,
            decision="ask",
            rule_id="destructive-rm",
            policy_hash=POLICY_HASH,
            reason="rm deletes files",
        ),
        p.ConfirmationRequested(
            call_id=call, turn=turn, tool=tool, rule_id="destructive-rm", reason="rm deletes files"
        ),
    ]


def _changed(call: str, path: str, before: str, after: str) -> p.FileChanged:
    return p.FileChanged(
        call_id=call, path=path, before_hash=before, after_hash=after, diff=f"diff {path} {after}\n"
    )


def confirmations() -> list[object]:
    """Calls that wait for an operator: granted, denied, answered twice, still
    waiting; a path changed twice in one call and again by a later call."""
    granted = _asked(1)[:4] + [
        p.ConfirmationGranted(call_id="c1", by="user:ops", reason="checked"),
        p.ToolCallStarted(call_id="c1", planned_count=2),
        _changed("c1", "a.py", "h0", "h1"),
        _changed("c1", "a.py", "h1", "h2"),
        p.ToolCallCompleted(call_id="c1", tool="shell", cpu_s=0.5, duration_s=1.0, output="ok"),
        p.TurnCompleted(turn=1, status="ok"),
        # redelivered answers: the confirmation is no longer pending
        p.ConfirmationGranted(call_id="c1", by="user:ops", reason="again"),
        p.ConfirmationDenied(call_id="c1", by="user:late", reason="too late"),
    ]
    again = (
        step_payloads(2, "replace")[:4]
        + [
            _changed("c2", "a.py", "h2", "h3"),
            _changed("c2", "b.py", None, "h1"),  # type: ignore[arg-type]
            *step_payloads(2, "replace")[4:],
        ]
    )
    denied = _asked(3) + [
        p.ConfirmationDenied(call_id="c3", by="user:ops", reason="not here"),
        p.TurnCompleted(turn=3, status="skipped"),
    ]
    return [
        p.SessionStarted(job_id="job-1", target="/w", steps=("a", "b", "c", "d")),
        p.PolicyAttached(
            name="team",
            hash=POLICY_HASH,
            document={"tier": "exec", "deny": ["curl"]},
            tier="exec",
            elevated_by="user:ops",
        ),
        *granted,
        *again,
        *denied,
        *_asked(4),  # nobody answered yet
    ]


def interrupted() -> list[object]:
    """A worker died mid-call, the call ran again, then failed: its planned
    changes never reach the patch."""
    head = step_payloads(2, "shell")[:4]
    return [
        *session_payloads(1)[:-1],
        *head,
        _changed("c2", "c.py", "h0", "h1"),
        head[-1],  # started again after the crash
        _changed("c2", "c.py", "h0", "h1"),
        p.ToolCallFailed(
            call_id="c2",
            tool="shell",
            error="CommandFailed",
            message="exit 2",
            cpu_s=0.1,
            duration_s=0.2,
            output="boom",
            output_bytes=4,
        ),
        p.TurnCompleted(turn=2, status="failed"),
        p.SessionFailed(error="StepFailed", message="step 2 failed"),
    ]


def _agent_started(mode: str = "job", budget: int | None = None) -> p.AgentStarted:
    return p.AgentStarted(
        instruction="fix the bug",
        instruction_digest="d" * 64,
        mode=mode,  # type: ignore[arg-type]
        provider="scripted",
        model="m1",
        max_turns=8,
        max_invalid_calls=2,
        token_budget=budget,
        prompt_version="v1",
        tools=("search", "shell"),
    )


def _requested(n: int) -> p.ModelRequested:
    return p.ModelRequested(
        model_turn=n, provider="scripted", model="m1", messages=2 * n, prompt_digest="q" * 64
    )


def _responded(n: int, content: str | None, *calls: p.ModelToolCall) -> p.ModelResponded:
    return p.ModelResponded(
        model_turn=n,
        model="m1",
        latency_s=0.25,
        finish_reason="tool_calls" if calls else "stop",
        input_tokens=100 * n,
        output_tokens=10 * n,
        cached_tokens=None if n % 2 else 40,
        content=content,
        tool_calls=calls,
    )


def agent_job() -> list[object]:
    """A job's agent: a tool call it runs, an invalid one, a failed model call
    retried, and the final answer."""
    return [
        p.SessionStarted(job_id="job-1", target="/w", steps=()),
        _agent_started(budget=5000),
        _requested(1),
        _responded(
            1,
            "let me look",
            p.ModelToolCall(id="t1", name="shell", arguments='{"c": 1}', turn=1),
            p.ModelToolCall(id="t2", name="nope", arguments="{", error="unknown tool"),
        ),
        *step_payloads(1, "shell"),
        _requested(2),
        p.ModelFailed(model_turn=2, error="ProviderUnavailable", message="503", transient=True),
        _requested(2),
        _responded(2, "done"),
        p.SessionCompleted(files_changed=0),
    ]


def chat_cancelled() -> list[object]:
    """A chat: messages typed, a turn cancelled whose answer comes late, a
    failed call, and a second AgentStarted that starts over."""
    return [
        p.SessionStarted(job_id="job-1", target="/w", steps=()),
        _agent_started("chat"),
        _requested(1),
        _responded(1, None, p.ModelToolCall(id="t1", name="search", arguments="{}", turn=1)),
        p.UserMessage(text="also the tests", digest="u" * 64),
        _requested(2),
        p.AgentTurnCancelled(model_turn=2, by="user:ana", reason="Ctrl-C"),
        _responded(2, "too late"),
        _requested(3),
        p.ModelFailed(model_turn=3, error="ProviderUnavailable", message="503 from upstream"),
        p.UserMessage(text="", digest="e" * 64),
        _agent_started("chat", budget=100),
        p.AgentTurnCancelled(model_turn=1, by="user:ana"),
    ]


def stray() -> list[object]:
    """Events about calls, turns and agents that do not exist, and events no
    projection reads: each leaves the state as it was, or only counts."""
    return [
        p.UserMessage(text="hello?", digest="u" * 64),
        _responded(1, "nobody asked"),
        p.TurnCompleted(turn=7, status="ok"),
        p.PermissionDecided(call_id="x", decision="deny", rule_id="r", policy_hash=POLICY_HASH),
        p.ToolCallStarted(call_id="x", planned_count=3),
        p.ConfirmationGranted(call_id="x", by="user:ops"),
        _changed("y", "z.py", "h0", "h1"),
        p.ToolCallCompleted(call_id="x", tool="search", output_bytes=7, bytes_written=2),
        p.ToolCallFailed(call_id="y", tool="shell", error="E", message="m", cpu_s=1.5),
        p.QuotaExceeded(call_id="x", tool="shell", rule_id="max-calls", detail="3 of 3"),
        p.RateLimited(call_id="x", tool="shell", rate="30/minute", retry_after_s=2.0),
        p.SecretAccessed(name="OPENAI", source="env:ORCH_OPENAI", reader="provider:openai"),
        p.SessionFinished(session_id="s", status="completed"),
        p.SessionStarted(job_id="job-2", target="/v", steps=("late",)),
    ]


NAMED = {
    "steps": lambda: session_payloads(3),
    "confirmations": confirmations,
    "interrupted": interrupted,
    "agent-job": agent_job,
    "chat-cancelled": chat_cancelled,
    "stray": stray,
}


# -- random sessions -----------------------------------------------------------


def _model_turn(rng: random.Random, n: int) -> list[object]:
    out: list[object] = [_requested(n)]
    how = rng.choice(["call", "call", "invalid", "failed", "cancelled", "message"])
    if how == "failed":
        out += [p.ModelFailed(model_turn=n, error="Timeout", message="slow"), _requested(n)]
    if how == "cancelled":
        out.append(p.AgentTurnCancelled(model_turn=n, by="user:ana"))
        if rng.random() < 0.5:
            out.append(_responded(n, "late"))
        return out
    if how == "message":
        out.append(p.UserMessage(text=f"msg {n}", digest="u" * 64))
    bad = p.ModelToolCall(id=f"b{n}", name="nope", arguments="{", error="unknown tool")
    calls = [p.ModelToolCall(id=f"t{n}", name="shell", arguments="{}", turn=n)]
    return [*out, _responded(n, f"turn {n}", *calls, *([bad] if how == "invalid" else []))]


def _step(rng: random.Random, turn: int, tool: str) -> tuple[list[object], bool]:
    """One step's events, and whether the session goes on after it."""
    paths = ["a.py", "b.py", "c/d.py"]
    files = [rng.choice(paths) for _ in range(rng.randint(0, 3))]
    outcome = rng.choice(["ok", "failed", "interrupted", "asked"])
    steps = step_payloads(turn, tool, ok=outcome != "failed")
    head, tail = steps[:4], steps[4:]
    out: list[object] = []
    if outcome == "asked":  # the call waits for an operator, then goes on
        answer = rng.choice(["granted", "denied", "pending"])
        out += head[:3] + _asked(turn, tool)[3:]
        if answer == "pending":
            return out, False
        cls = p.ConfirmationGranted if answer == "granted" else p.ConfirmationDenied
        out.append(cls(call_id=f"c{turn}", by="user:ops", reason="checked"))
        if answer == "denied":
            return out, True
        head = head[3:]
    changes = [_changed(f"c{turn}", f, f"h{turn - 1}", f"h{turn}") for f in files]
    if outcome == "interrupted":
        return out + head + changes, False
    return out + head + changes + tail, True


def random_session(rng: random.Random) -> list[object]:
    """Any valid session: steps that succeed, fail, wait for an operator or stop
    half-way (a crash), files changed again, and model turns between steps."""
    out: list[object] = [p.SessionStarted(job_id="j", target="/w", steps=("s",))]
    if rng.random() < 0.5:
        out.append(
            p.PolicyAttached(
                name="team",
                hash=POLICY_HASH,
                document={"tier": "exec"},
                tier=rng.choice(["read-only", "exec"]),
                elevated_by=rng.choice([None, "user:ops"]),
            )
        )
    agent = rng.random() < 0.5
    if agent:
        out.append(_agent_started(rng.choice(["job", "chat"])))
    for turn in range(1, rng.randint(0, 12) + 1):
        if agent:
            out += _model_turn(rng, turn)
        tool = rng.choice(["search", "replace", "write", "patch", "shell"])
        events, go_on = _step(rng, turn, tool)
        out += events
        if not go_on:
            break
    end = rng.choice(["completed", "failed", "open"])
    if end == "completed":
        out.append(p.SessionCompleted(files_changed=0))
    elif end == "failed":
        out.append(p.SessionFailed(error="X", message="y"))
    return out

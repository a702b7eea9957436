"""What a step task needs to start its session: the message the dispatcher
sends and every step of the session receives."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Ticket(BaseModel):
    """What a step task needs to start its session (sent in the task message)."""

    model_config = ConfigDict(frozen=True)
    job_id: str
    session_id: str
    target: str  # display name
    path: str | None  # absolute workspace path, None when it did not resolve
    error: str | None = None  # why the target cannot run
    steps: tuple[str, ...]
    sessions_total: int = 0  # sessions in the job: the one that finishes last completes it
    # The session's policy (a PolicyDoc as JSON data, already combined from the
    # job spec, `--policy` and configuration), the caller's tier, and who
    # elevated the session. Recorded as PolicyAttached when the session starts;
    # later steps decide from that event, not from this message.
    policy: dict[str, Any] | None = None
    tier: str | None = None
    elevated_by: str | None = None
    # The job's `agent:` block (jobspec.AgentSpec as JSON data, its script
    # read into `turns`): the agent works on the target after the steps.
    agent: dict[str, Any] | None = None
    # The target's own variables (`targets: [{path, vars}]`): each step's
    # `{{ vars.NAME }}` is rendered with them just before it runs.
    vars: dict[str, str] = {}
    # Directories (venvs, interpreters) the sandbox mounts read-only, their
    # bin/ first on PATH, in order (`toolchains:` in the job spec).
    toolchains: tuple[str, ...] = ()

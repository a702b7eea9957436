"""Errors of the service, by what the user should do about them.

    OrchestratorError
    ├── UserError            bad input or configuration        exit 2
    │   ├── SpecError        a job spec that does not validate
    │   ├── ConfigError      settings that do not validate
    │   ├── NotFound         no job, session or confirmation by that id
    │   └── Conflict         too late: the job already ended
    ├── PolicyDenied         refused by policy                 exit 3
    ├── InfraUnavailable     broker, database or worker down   exit 4
    └── ToolError            a tool invocation failed          exit 1
        ├── ToolInputError   the step's arguments are wrong for this workspace
        ├── ToolTimeout      ran past its time limit (killed)
        └── CountMismatch    a replace/search count outside `expect`

`events.errors` has the store's own family; the CLI maps both to exit codes.
"""

from __future__ import annotations

from typing import Any


class OrchestratorError(Exception):
    exit_code = 1
    transient = False


class UserError(OrchestratorError):
    exit_code = 2


class SpecError(UserError):
    """A job spec failed validation; `problems` lists every one, with YAML positions."""

    def __init__(self, source: str, problems: list[str]) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"job spec {source} is invalid ({len(problems)} problem"
            f"{'s' if len(problems) != 1 else ''}); nothing was enqueued:\n{lines}"
        )
        self.source, self.problems = source, problems


class ConfigError(UserError):
    pass


class NotFound(UserError):
    """An id that names nothing in the store (the API answers 404)."""


class Conflict(UserError):
    """A request the current state no longer allows (the API answers 409)."""


class PolicyDenied(OrchestratorError):
    exit_code = 3

    def __init__(self, call_id: str, rule_id: str, why: str) -> None:
        super().__init__(
            f"call {call_id} denied by rule {rule_id}: {why}. "
            "Request confirmation or change the session policy."
        )
        self.call_id, self.rule_id = call_id, rule_id


class InfraUnavailable(OrchestratorError):
    exit_code = 4
    transient = True


class ToolError(OrchestratorError):
    """A tool call that failed; `error` is the type name recorded in ToolCallFailed.
    `result` carries what the call produced before failing (output, resources),
    when it ran at all, so the failure event records it."""

    exit_code = 1
    result: Any = None

    @property
    def error(self) -> str:
        return type(self).__name__


class ToolInputError(ToolError):
    pass


class ToolTimeout(ToolError):
    pass


class ResourceExceeded(ToolError):
    """A command stopped by one of its per-call limits (processes, memory, CPU
    time, file size): recorded as its own outcome, with the limit and the
    value seen in the message, never as a completed call."""

    def __init__(self, message: str, limit: str, value: str) -> None:
        super().__init__(message)
        self.limit, self.value = limit, value


class JobCancelled(ToolError):
    """The call's job was cancelled while it ran: the command was killed with
    everything it started and nothing it changed was kept."""


class CountMismatch(ToolError):
    pass

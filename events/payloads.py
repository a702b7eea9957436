"""Typed event payloads: one frozen pydantic model per event type.

The `type` literal is the discriminator of the `Payload` union; it is also the
envelope's `type`. Adding a type: define the model, add it to `Payload`. Changing
one: bump `SCHEMA_VERSIONS[type]` and register an upcaster in `events.upcast`.
Payloads never hold secrets: callers mask before building them. Forgettable
fields (events.sealing.SEALED_FIELDS) may hold a sealed string instead of
their text; the models take it as the string it is.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


Decision = Literal["allow", "deny", "ask"]


class SessionRef(_Payload):
    session_id: str
    target: str
    # The target's own variables and toolchains (job spec `targets:`), so a
    # continuation rebuilds the same ticket from the job's stream alone.
    vars: dict[str, str] = {}
    toolchains: tuple[str, ...] = ()
    # The absolute folder `submit` resolved the target to (None: it did not
    # resolve, or an event from before this field), so a session whose
    # worker died before it started is resumed in the same folder.
    workspace: str | None = None


class JobSubmitted(_Payload):
    type: Literal["JobSubmitted"] = "JobSubmitted"
    name: str
    spec: dict[str, Any]
    sessions: tuple[SessionRef, ...]
    # What every session runs under, as `submit` combined it (the spec's
    # policy with `--policy` files and the configured one; `--tier`;
    # `--allow-destructive`): a session resumed before it started gets the
    # same. None in events from before these fields.
    policy: dict[str, Any] | None = None
    tier: str | None = None
    elevated_by: str | None = None


class JobCompleted(_Payload):
    type: Literal["JobCompleted"] = "JobCompleted"
    # "cancelled": a cancel was requested before the job's last session ended.
    status: Literal["completed", "failed", "cancelled"]
    sessions_completed: int
    sessions_failed: int


class JobCancelRequested(_Payload):
    """On the job stream: someone asked the job to stop. Workers end each of
    its sessions before that session's next step, and a running shell step
    is killed (it polls for this event); sessions waiting for a confirmation
    end at once. The job then ends `cancelled`."""

    type: Literal["JobCancelRequested"] = "JobCancelRequested"
    by: str
    reason: str = ""


class SessionStarted(_Payload):
    type: Literal["SessionStarted"] = "SessionStarted"
    job_id: str
    target: str
    steps: tuple[str, ...]
    policy: str = "default-allow"


class TurnStarted(_Payload):
    type: Literal["TurnStarted"] = "TurnStarted"
    turn: int
    name: str
    kind: str


class TurnCompleted(_Payload):
    type: Literal["TurnCompleted"] = "TurnCompleted"
    turn: int
    status: Literal["ok", "failed", "skipped"]


class ToolCallRequested(_Payload):
    type: Literal["ToolCallRequested"] = "ToolCallRequested"
    call_id: str
    turn: int
    tool: str
    args: dict[str, Any]


class PermissionDecided(_Payload):
    type: Literal["PermissionDecided"] = "PermissionDecided"
    call_id: str
    decision: Decision
    rule_id: str
    policy_hash: str
    reason: str = ""


class ToolCallStarted(_Payload):
    type: Literal["ToolCallStarted"] = "ToolCallStarted"
    call_id: str
    planned_count: int = 0  # replacements a file step planned (its FileChanged follow)
    trace_id: str | None = None  # the OpenTelemetry trace it ran in (v2; None: no tracing)


class ToolCallCompleted(_Payload):
    type: Literal["ToolCallCompleted"] = "ToolCallCompleted"
    call_id: str
    tool: str
    exit_code: int = 0
    duration_s: float = 0.0
    cpu_s: float = 0.0
    output: str = ""
    output_bytes: int = 0
    output_digest: str = ""
    bytes_written: int = 0
    count: int = 0


class ToolCallFailed(_Payload):
    type: Literal["ToolCallFailed"] = "ToolCallFailed"
    call_id: str
    tool: str
    error: str
    message: str
    duration_s: float = 0.0
    cpu_s: float = 0.0
    output: str = ""
    output_bytes: int = 0
    retryable: bool = False


class FileChanged(_Payload):
    """A file change a call makes. Appended with ToolCallStarted, before the
    change is applied, so a redelivered task can compare the hashes with the
    disk and finish (or refuse) instead of writing blindly again. It counts
    once the call's ToolCallCompleted follows; a ToolCallFailed voids it."""

    type: Literal["FileChanged"] = "FileChanged"
    call_id: str
    path: str
    before_hash: str | None
    after_hash: str | None
    diff: str


class SessionFinished(_Payload):
    """On the job stream: one session of the job ended (job progress)."""

    type: Literal["SessionFinished"] = "SessionFinished"
    session_id: str
    status: Literal["completed", "failed"]


class SessionCompleted(_Payload):
    type: Literal["SessionCompleted"] = "SessionCompleted"
    files_changed: int


class SessionFailed(_Payload):
    type: Literal["SessionFailed"] = "SessionFailed"
    error: str
    message: str


class PolicyAttached(_Payload):
    """The policy a session runs under, recorded whole (with the session's tier
    and who elevated it), so decisions and audits rebuild from the log alone."""

    type: Literal["PolicyAttached"] = "PolicyAttached"
    name: str
    hash: str
    document: dict[str, Any]
    tier: str
    elevated_by: str | None = None  # who granted --allow-destructive, if anyone


class ConfirmationRequested(_Payload):
    """The policy said `ask`: nothing runs until an operator answers."""

    type: Literal["ConfirmationRequested"] = "ConfirmationRequested"
    call_id: str
    turn: int
    tool: str
    rule_id: str
    reason: str


class ConfirmationGranted(_Payload):
    """Exactly that request may run (never "any curl from now on")."""

    type: Literal["ConfirmationGranted"] = "ConfirmationGranted"
    call_id: str
    by: str
    reason: str = ""


class ConfirmationDenied(_Payload):
    type: Literal["ConfirmationDenied"] = "ConfirmationDenied"
    call_id: str
    by: str
    reason: str = ""


class QuotaExceeded(_Payload):
    type: Literal["QuotaExceeded"] = "QuotaExceeded"
    call_id: str
    tool: str
    rule_id: str
    detail: str  # the limit and the usage, in words


class RateLimited(_Payload):
    type: Literal["RateLimited"] = "RateLimited"
    call_id: str
    tool: str
    rate: str  # e.g. "30/minute"
    retry_after_s: float


class StreamHead(_Payload):
    stream_id: str
    seq: int
    hash: str


class AuditDigest(_Payload):
    """Stream heads signed with a key the database does not hold (events.digests)."""

    type: Literal["AuditDigest"] = "AuditDigest"
    heads: tuple[StreamHead, ...]
    position: int  # the global position the heads were read at
    key_id: str
    signature: str  # Ed25519, hex, over events.digests.signed_bytes


# -- the agent (orchestrator.agent.core) ----------------------------------------------


class AgentStarted(_Payload):
    """A session's agent begins: what it was asked and what may answer. The
    prompt text is not stored: it is rendered from the versioned template
    (`prompt_version`) and the session's events, so replay rebuilds it."""

    type: Literal["AgentStarted"] = "AgentStarted"
    instruction: str  # masked; "" in digest mode
    instruction_digest: str
    mode: Literal["job", "chat"] = "job"
    provider: str
    model: str
    max_turns: int
    max_invalid_calls: int
    token_budget: int | None = None
    prompt_version: str
    tools: tuple[str, ...]


class UserMessage(_Payload):
    """A message typed in `orchestrator chat`: the next model turn answers it."""

    type: Literal["UserMessage"] = "UserMessage"
    text: str  # masked; "" in digest mode
    digest: str


class ModelRequested(_Payload):
    type: Literal["ModelRequested"] = "ModelRequested"
    model_turn: int
    provider: str
    model: str
    messages: int  # how many messages were sent
    prompt_digest: str  # sha256 of the canonical JSON of the messages
    trace_id: str | None = None  # the OpenTelemetry trace of the call (v2)


class ModelToolCall(_Payload):
    id: str  # the model's id for the call
    name: str
    arguments: str  # the JSON text the model wrote (masked)
    turn: int = 0  # the session turn it runs as; 0: it cannot run
    error: str | None = None  # why it cannot run, as the model will read it


class ModelResponded(_Payload):
    type: Literal["ModelResponded"] = "ModelResponded"
    model_turn: int
    model: str
    latency_s: float
    attempts: int = 1
    finish_reason: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int | None = None
    content: str | None = None  # masked; None in digest mode or when empty
    content_digest: str = ""
    tool_calls: tuple[ModelToolCall, ...] = ()


class ModelFailed(_Payload):
    type: Literal["ModelFailed"] = "ModelFailed"
    model_turn: int
    error: str
    message: str
    attempts: int = 1
    transient: bool = False


class AgentTurnCancelled(_Payload):
    """Ctrl-C in chat: the model turn in flight is dropped; tool calls it
    asked for and that did not start never will."""

    type: Literal["AgentTurnCancelled"] = "AgentTurnCancelled"
    model_turn: int
    by: str
    reason: str = ""


class SecretAccessed(_Payload):
    """A secret was read (orchestrator.config.secrets): which, from where, by whom.
    Never the value. On the reading host's `secrets:<host>` stream, or on the
    session stream of the session that read it."""

    type: Literal["SecretAccessed"] = "SecretAccessed"
    name: str
    source: str  # env:ORCH_X, file:PATH, keyring:SERVICE, vault:MOUNT/PATH
    reader: str  # the component that asked, e.g. provider:openai


class PayloadsForgotten(_Payload):
    """On the forgotten stream: its data keys were destroyed, so its sealed
    fields (events.sealing) read as "forgotten on DATE by WHO: REASON" from now
    on; hashes, digests and plaintext metadata are untouched."""

    type: Literal["PayloadsForgotten"] = "PayloadsForgotten"
    by: str
    reason: str
    key_ids: tuple[str, ...]


class ToolCallRetried(_Payload):
    """A network tool's attempt failed transiently and will be tried again
    after `delay_s` (connect error, timeout, 429, 502-504; Retry-After
    honoured). Recorded with the call's outcome; a retry costs no quota."""

    type: Literal["ToolCallRetried"] = "ToolCallRetried"
    call_id: str
    attempt: int  # the attempt that failed, from 1
    reason: str  # e.g. "HTTP 503", "ConnectError", "ReadTimeout"
    delay_s: float
    host: str = ""


class ToolCallRedelivered(_Payload):
    """A delivery of the step found its call started and not finished: the
    attempt before was interrupted (its worker died mid-call, or ran past
    the broker's visibility timeout). This delivery runs attempt `attempt`
    (2, 3, ...: the delivery count, kept in the log); the event's actor is
    the worker that runs it, as ToolCallStarted's is the first attempt's."""

    type: Literal["ToolCallRedelivered"] = "ToolCallRedelivered"
    call_id: str
    attempt: int
    reason: str = ""


class PathsHidden(_Payload):
    """Workspace paths a shell call's sandbox hid from its command (a file shown
    empty and read-only, a folder as an empty read-only one): what the policy
    denies reading (`.env*`, keys, `.ssh/`, `.git/config` but its format
    part) and files with a name outside the workspace (hard links). Appended
    with the call's outcome when it hid anything: the record of a refusal
    the command never saw. `paths`: the first 100, workspace-relative, a
    folder with a trailing `/`; `total`: how many."""

    type: Literal["PathsHidden"] = "PathsHidden"
    call_id: str
    paths: list[str]
    total: int


class IgnoredFilesChanged(_Payload):
    """Files a shell call made, changed or deleted where the workspace's
    ignore files point (`__pycache__`, build output, a venv) or in a
    repository's own `.git/` folder (a commit's objects, refs, index):
    applied, but left out of FileChanged and the patch, as `git diff` leaves
    them out.
    Listed so the log holds every effect of the call (a planted `.pyc` runs
    code too). `paths`: the first 100, workspace-relative, sorted; `total`:
    how many."""

    type: Literal["IgnoredFilesChanged"] = "IgnoredFilesChanged"
    call_id: str
    paths: list[str]
    total: int


class CircuitChanged(_Payload):
    """A destination host's circuit breaker changed state, on the host's
    `circuit:<host>` stream (shared by every worker). `retry_at` is when an
    open circuit lets a probe through."""

    type: Literal["CircuitChanged"] = "CircuitChanged"
    host: str
    state: Literal["open", "half-open", "closed"]
    previous: Literal["open", "half-open", "closed"]
    failures: int = 0
    retry_at: str | None = None  # ISO 8601 UTC, for state open
    reason: str = ""


_TYPES = (
    JobSubmitted,
    JobCompleted,
    JobCancelRequested,
    SessionStarted,
    TurnStarted,
    TurnCompleted,
    ToolCallRequested,
    PermissionDecided,
    ToolCallStarted,
    ToolCallCompleted,
    ToolCallFailed,
    FileChanged,
    SessionFinished,
    SessionCompleted,
    SessionFailed,
    PolicyAttached,
    ConfirmationRequested,
    ConfirmationGranted,
    ConfirmationDenied,
    QuotaExceeded,
    RateLimited,
    AuditDigest,
    AgentStarted,
    UserMessage,
    ModelRequested,
    ModelResponded,
    ModelFailed,
    AgentTurnCancelled,
    SecretAccessed,
    ToolCallRetried,
    ToolCallRedelivered,
    PathsHidden,
    IgnoredFilesChanged,
    CircuitChanged,
    PayloadsForgotten,
)

Payload = Annotated[
    Union[
        JobSubmitted,
        JobCompleted,
        JobCancelRequested,
        SessionStarted,
        TurnStarted,
        TurnCompleted,
        ToolCallRequested,
        PermissionDecided,
        ToolCallStarted,
        ToolCallCompleted,
        ToolCallFailed,
        FileChanged,
        SessionFinished,
        SessionCompleted,
        SessionFailed,
        PolicyAttached,
        ConfirmationRequested,
        ConfirmationGranted,
        ConfirmationDenied,
        QuotaExceeded,
        RateLimited,
        AuditDigest,
        AgentStarted,
        UserMessage,
        ModelRequested,
        ModelResponded,
        ModelFailed,
        AgentTurnCancelled,
        SecretAccessed,
        ToolCallRetried,
        ToolCallRedelivered,
        PathsHidden,
        IgnoredFilesChanged,
        CircuitChanged,
        PayloadsForgotten,
    ],
    Field(discriminator="type"),
]

PAYLOAD_TYPES: dict[str, type[BaseModel]] = {m.model_fields["type"].default: m for m in _TYPES}

# The schema version each type is written at today. Older versions are upcast
# on read (events.upcast); newer ones are refused.
SCHEMA_VERSIONS: dict[str, int] = {name: 1 for name in PAYLOAD_TYPES} | {
    "ToolCallStarted": 2,
    "ModelRequested": 2,  # v2: trace_id
}

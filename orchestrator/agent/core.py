"""The agent loop's pure core: what the model is offered, what it is shown,
how its tool calls become steps, and what the session does next.

Everything here is a function of the session's projections (rebuilt from
events) and of its arguments: no clock, no I/O beyond reading the packaged
prompt template. The Celery task (`tasks.agent`) and `orchestrator.agent.loop`
do the calling and appending; a crash anywhere leaves a log from which
`next_action` picks up exactly where the work stopped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import jinja2
import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from events.projections import AgentCall, AgentState, Projections, SessionState
from orchestrator.agent.providers.base import ModelReply, ToolSpec
from orchestrator.guard.masking import mask
from orchestrator.run.steps import (
    BrowserStep,
    DeleteStep,
    FetchStep,
    ListStep,
    PatchStep,
    ReadStep,
    ReplaceStep,
    SearchStep,
    ShellStep,
    Step,
    WebSearchStep,
    WriteStep,
)

__all__ = [
    "TOOLS",
    "tools_for_tier",
    "tool_specs",
    "prompt_version",
    "system_prompt",
    "messages",
    "tool_calls_of",
    "step_of",
    "next_action",
    "Action",
    "digest",
]

PROMPTS = Path(__file__).parent / "prompts"
TEMPLATE = "agent_system.j2"
AGENT_OUTPUT_BYTES = 16 * 1024  # per tool result shown to the model


@dataclass(frozen=True)
class Tool:
    model: type[BaseModel]
    description: str
    fields: tuple[str, ...]  # the arguments the model may set; the rest keep defaults
    kind: str = ""  # the step kind, when it is not the tool's name


TOOLS: dict[str, Tool] = {
    "read": Tool(ReadStep, "Read a text file of the workspace.", ("path",)),
    "list": Tool(
        ListStep,
        "List the files under a folder of the workspace, one path a "
        "line; `glob` filters (e.g. ['**/*.py']).",
        ("path", "glob"),
    ),
    "search": Tool(
        SearchStep,
        "Search the workspace's files for a regular expression "
        "(Python syntax), one `path:line:text` a match; `literal` for plain text, "
        "`glob` to narrow the files.",
        ("pattern", "literal", "ignore_case", "glob"),
    ),
    "replace": Tool(
        ReplaceStep,
        "Replace every match of a regular expression in the files "
        "`glob` selects (all files if empty); `replacement` may use \\1 groups.",
        ("pattern", "replacement", "literal", "ignore_case", "glob"),
    ),
    "write": Tool(
        WriteStep, "Create or overwrite a file with `content`.", ("path", "content", "overwrite")
    ),
    "patch": Tool(
        PatchStep,
        "Apply a unified diff (git style, paths relative to the "
        "workspace); all files change or none.",
        ("diff",),
    ),
    "delete": Tool(DeleteStep, "Delete one file (a person may have to approve it).", ("path",)),
    "shell": Tool(
        ShellStep,
        "Run one command in the workspace sandbox. `command` is split "
        "like a shell would, but no shell runs it: no pipes or redirects. Returns "
        "the exit code and output.",
        ("command", "cwd"),
    ),
    "web_fetch": Tool(
        FetchStep,
        "GET an http(s) URL: status, final URL, content type and the "
        "body as text (HTML as Markdown), capped. Only hosts the session's "
        "network policy allows.",
        ("url",),
        kind="fetch",
    ),
    "web_search": Tool(
        WebSearchStep,
        "Search the web: numbered results with title, URL and snippet.",
        ("query", "limit"),
    ),
    "browser": Tool(
        BrowserStep,
        "Open a URL in a real browser (JavaScript runs) and return "
        "its rendered text, or a screenshot; `actions` (click, fill, wait_for a "
        "selector) run first.",
        ("url", "output", "actions", "selector"),
    ),
}
NETWORK_TOOLS = ("web_fetch", "web_search", "browser")
_TIER_TOOLS = {
    "read-only": ("read", "list", "search"),
    "read-write": ("read", "list", "search", "replace", "write", "patch", "delete"),
    "exec": ("read", "list", "search", "replace", "write", "patch", "delete", "shell"),
}
_STEP: TypeAdapter[Any] = TypeAdapter(Step)


def tools_for_tier(tier: str | None, network: bool = False) -> tuple[str, ...]:
    """The tools a session at `tier` gets; the network tools (read-only: they
    change nothing in the workspace) only when its policy enables the network."""
    tools = _TIER_TOOLS.get(tier or "exec", _TIER_TOOLS["read-only"])
    return (*tools, *NETWORK_TOOLS) if network else tools


@lru_cache(maxsize=16)
def tool_specs(names: tuple[str, ...]) -> tuple[ToolSpec, ...]:
    """JSON-schema tool definitions, from the steps' own pydantic models."""
    out = []
    for name in names:
        tool = TOOLS[name]
        schema = tool.model.model_json_schema()
        props = {k: _plain(v) for k, v in schema["properties"].items() if k in tool.fields}
        if name == "shell":  # a string is what a model writes; ShellStep splits it
            props["command"] = {
                "type": "string",
                "description": "the command line, e.g. `pytest -q tests/`",
            }
        required = [k for k in schema.get("required", []) if k in tool.fields]
        params: dict[str, Any] = {
            "type": "object",
            "properties": props,
            "additionalProperties": False,
        }
        if required:
            params["required"] = required
        out.append(ToolSpec(name, tool.description, params))
    return tuple(out)


def _plain(prop: dict[str, Any]) -> dict[str, Any]:
    """A property schema without pydantic's titles (noise for a model)."""
    return {k: v for k, v in prop.items() if k != "title"}


@lru_cache(maxsize=1)
def _template() -> tuple[jinja2.Template, str]:
    text = (PROMPTS / TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    return env.from_string(text), f"{TEMPLATE}@{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def prompt_version() -> str:
    """The template's name and content hash: recorded in AgentStarted, so an
    auditor knows exactly which instructions the model had."""
    return _template()[1]


def system_prompt(s: SessionState, has_network: bool) -> str:
    a = s.agent or AgentState()
    return (
        _template()[0]
        .render(
            workspace=s.target,
            tier=s.tier or "exec",
            mode=a.mode,
            tools=list(a.tools),
            has_network=has_network,
        )
        .strip()
    )


# -- what the model is shown ---------------------------------------------------------


# What `messages` reads: a session's whole history of these (not its diffs).
PROMPT_TYPES = frozenset(
    (
        "SessionStarted",
        "PolicyAttached",
        "AgentStarted",
        "UserMessage",
        "ModelRequested",
        "ModelResponded",
        "ModelFailed",
        "AgentTurnCancelled",
        "ToolCallRequested",
        "PermissionDecided",
        "ToolCallStarted",
        "ToolCallCompleted",
        "ToolCallFailed",
        "ConfirmationRequested",
        "ConfirmationGranted",
        "ConfirmationDenied",
    )
)


def messages(state: Projections, has_network: bool) -> list[dict[str, Any]]:
    """The conversation as chat-completions messages, rebuilt from events: from
    the whole history (`events.history.history` of PROMPT_TYPES), not from a
    live state, which keeps the conversation's end only."""
    s = state.session
    a = s.agent or AgentState()
    out: list[dict[str, Any]] = [{"role": "system", "content": system_prompt(s, has_network)}]
    for entry in a.entries:
        if entry.role == "user":
            out.append({"role": "user", "content": entry.text or ""})
        elif entry.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": entry.text}
            if entry.calls:
                msg["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in entry.calls
                ]
            out.append(msg)
            out += [
                {"role": "tool", "tool_call_id": c.id, "content": result_text(state, c)}
                for c in entry.calls
            ]
    return out


def result_text(state: Projections, call: AgentCall) -> str:
    """What the model reads back for one of its tool calls."""
    if call.error:
        return f"error: {call.error}"
    s = state.session
    tc = s.call(f"{s.session_id}/{call.turn}")
    if tc is None:
        return "not run: the turn was cancelled"
    if tc.status == "completed":
        code = f"exit code {tc.exit_code}\n" if tc.tool == "shell" else ""
        return code + (tc.output or "(no output)")
    if tc.status == "failed":
        shown = tc.output if tc.output and tc.output.strip() not in tc.message else ""
        return f"failed ({tc.error}): {tc.message}" + (f"\n{shown}" if shown else "")
    if tc.status == "denied":
        entry = next((x for x in state.ledger.entries if x.call_id == tc.call_id), None)
        why = f" by rule {entry.rule_id}: {entry.reason}" if entry else ""
        return f"denied{why}. Nothing ran."
    refused = s.confirmation(tc.call_id) if tc.status == "asked" else None
    if refused is not None and refused.status == "denied":
        return (
            f"denied by {refused.by} when asked (rule {refused.rule_id}: {refused.reason})"
            + (f": {refused.answer}" if refused.answer else "")
            + ". Nothing ran."
        )
    return f"not finished ({tc.status})"


# -- what the model asked for ---------------------------------------------------------


def tool_calls_of(
    reply: ModelReply, allowed: tuple[str, ...], base_turn: int, secrets: tuple[str, ...] = ()
) -> tuple[list[dict[str, Any]], int]:
    """The reply's tool calls as ModelToolCall payload fields, each either
    given the next session turn or an error the model will read; and the
    last turn given. A call whose arguments hold a secret is refused: what
    is recorded must be what runs, and secrets never enter an event."""
    out: list[dict[str, Any]] = []
    turn = base_turn
    for call in reply.tool_calls:
        masked = mask(call.arguments, secrets)
        error = None
        if masked != call.arguments:
            error = (
                "the arguments contain what looks like a secret (masked in the log); "
                "secrets may not be written by the agent. Leave them out."
            )
        else:
            step = step_of(call.name, call.arguments, allowed)
            error = step if isinstance(step, str) else None
        if error is None:
            turn += 1
        out.append(
            {
                "id": call.id or f"call_{len(out) + 1}",
                "name": call.name,
                "arguments": masked,
                "turn": 0 if error else turn,
                "error": error,
            }
        )
    return out, turn


def step_of(name: str, arguments: str, allowed: tuple[str, ...]) -> Step | str:
    """The step a tool call runs as, or why it cannot run (for the model)."""
    if name not in TOOLS:
        return f"there is no tool {name!r}; the tools are: {', '.join(allowed)}"
    if name not in allowed:
        return (
            f"the tool {name!r} is above this session's permission tier; use one of: "
            f"{', '.join(allowed)}"
        )
    try:
        args = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError as exc:
        return f"the arguments are not valid JSON ({exc}); send a JSON object"
    if not isinstance(args, dict):
        return "the arguments must be a JSON object of named arguments"
    tool = TOOLS[name]
    unknown = sorted(set(args) - set(tool.fields))
    if unknown:
        return (
            f"{name} takes no argument {', '.join(map(repr, unknown))}; its arguments "
            f"are: {', '.join(tool.fields)}"
        )
    fields: dict[str, Any] = {"kind": tool.kind or name, **args, "continue_on_error": True}
    if "max_output_bytes" in tool.model.model_fields:
        fields["max_output_bytes"] = AGENT_OUTPUT_BYTES
    try:
        return _STEP.validate_python(fields)  # type: ignore[no-any-return]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'][1:])) or name}: {e['msg']}" for e in exc.errors()
        )
        return f"invalid arguments for {name}: {problems}"


# -- what happens next ------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    kind: Literal["model", "tool", "finish", "fail", "wait", "idle", "done"]
    model_turn: int = 0
    turn: int = 0
    step: Step | None = None
    error: str = ""
    message: str = ""


def next_action(state: Projections) -> Action:
    """The one next unit of work for an agent session."""
    s = state.session
    a = s.agent
    if s.finished or a is None:
        return Action("done")
    if s.waiting:
        return Action("wait")
    last = a.entries[-1] if a.entries else None
    if last is None or last.role == "cancelled":
        return Action("idle")
    if last.role == "assistant":
        for call in last.calls:
            if call.turn and not _settled(s, call.turn):
                step = step_of(call.name, call.arguments, a.tools)
                assert not isinstance(step, str), "validated when the reply was recorded"
                return Action("tool", turn=call.turn, step=step)
        if not last.calls:
            if a.mode == "chat":
                return Action("idle")
            return Action("finish", message=last.text or "")
    return _model_or_stop(state, a)


def _settled(s: SessionState, turn: int) -> bool:
    call = s.call(f"{s.session_id}/{turn}")
    if call is not None and call.status == "asked":
        # A denied confirmation settles the call once its turn is recorded as
        # failed (the runner does that, nothing runs); it stays "asked".
        answer, t = s.confirmation(call.call_id), s.turn(turn)
        return (
            answer is not None
            and answer.status == "denied"
            and t is not None
            and t.status != "running"
        )
    return call is not None and call.status in ("completed", "failed", "denied")


def _model_or_stop(state: Projections, a: AgentState) -> Action:
    if a.model_turns >= a.max_turns:
        return Action(
            "fail",
            error="MaxTurns",
            message=(
                f"the agent used all {a.max_turns} model turns without finishing; raise "
                "`agent.max_turns` in the job spec, or narrow the instruction"
            ),
        )
    if a.invalid_calls > a.max_invalid_calls:
        return Action(
            "fail",
            error="InvalidToolCalls",
            message=(
                f"the model made {a.invalid_calls} tool calls that could not run (more than "
                f"{a.max_invalid_calls} allowed); check that the model supports tool calling, "
                "or raise `agent.max_invalid_calls`"
            ),
        )
    used = state.quota.tokens_in + state.quota.tokens_out
    budget = token_budget(state.session, a)
    if budget is not None and used >= budget:
        return Action(
            "fail",
            error="TokenQuota",
            message=(
                f"the session used {used} model tokens, its budget is {budget}; raise "
                "`agent.token_budget` in the job spec or `session_limits.tokens` in the policy, "
                "whichever is lower"
            ),
        )
    return Action("model", model_turn=a.model_turns + 1)


def token_budget(s: SessionState, a: AgentState) -> int | None:
    """The smaller of the agent's budget and the recorded policy's limit."""
    limits = (s.policy or {}).get("session_limits") or {}
    found = [b for b in (a.token_budget, limits.get("tokens")) if b is not None]
    return min(found) if found else None


def digest(data: Any) -> str:
    """sha256 of canonical JSON (or of the text itself)."""
    raw = (
        data.encode() if isinstance(data, str) else orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    )
    return hashlib.sha256(raw).hexdigest()

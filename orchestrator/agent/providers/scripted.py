"""A deterministic model: replays a script of assistant messages and tool
calls from a YAML or JSON file, for tests, demos and offline use.

Which entry answers is decided by the request alone (the number of assistant
messages already in it), so a retried or redelivered model call gets the
same reply, as replay requires. Each entry becomes a real `ChatCompletion`
and goes through `parse_completion` like a response off the wire.

    - content: "Let me find the callers."
      tool_calls:
        - {name: search, arguments: {pattern: fetch_user}}
    - tool_calls:
        - {name: replace, arguments: {pattern: fetch_user, replacement: load_user}}
    - content: "Renamed fetch_user to load_user."

`arguments` may be a mapping (sent as JSON) or a string sent as is, which is
how a test feeds the loop malformed JSON. `usage: {input: N, output: M}`
overrides the token estimate (4 characters a token).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import yaml
from openai.types.chat import ChatCompletion

from orchestrator.agent.providers.base import ModelReply, ModelRequest, parse_completion
from orchestrator.errors import ConfigError

__all__ = ["ScriptedProvider", "load_script", "check_turns"]


FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "function_call")


def load_script(path: Path) -> list[dict[str, Any]]:
    """The script's entries, checked enough that a typo fails at start."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"cannot read the model script {path}: {exc.strerror}; set "
            "`model_script` to a YAML file of assistant turns"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"the model script {path} is not UTF-8 text ({exc.reason} at byte "
            f"{exc.start}); save it as UTF-8 YAML"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"the model script {path} is not valid YAML: {exc}") from None
    if isinstance(data, dict):
        data = data.get("turns")
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise ConfigError(
            f"the model script {path} must be a list of turns (mappings with "
            "`content` and/or `tool_calls`), or a mapping with `turns:`"
        )
    check_turns(data, str(path))
    return data


def check_turns(turns: Sequence[Mapping[str, Any]], source: str) -> None:
    """Raise ConfigError naming the first turn (1-based) that would fail when
    it is replayed, and what to write instead."""
    for i, turn in enumerate(turns, 1):
        where = f"turn {i} of the model script {source}"
        unknown = set(turn) - {"content", "tool_calls", "usage", "finish_reason"}
        if unknown:
            raise ConfigError(
                f"{where} has unknown keys {sorted(unknown)}; use content, "
                "tool_calls, usage, finish_reason"
            )
        if turn.get("content") is not None and not isinstance(turn["content"], str):
            raise ConfigError(f"{where}: `content` must be text; quote it")
        if turn.get("finish_reason") is not None and turn["finish_reason"] not in FINISH_REASONS:
            raise ConfigError(
                f"{where}: `finish_reason` {turn['finish_reason']!r} is not one of "
                f"{', '.join(FINISH_REASONS)}"
            )
        usage = turn.get("usage")
        if usage is not None and (
            not isinstance(usage, Mapping)
            or set(usage) - {"input", "output"}
            or not all(type(v) is int and v >= 0 for v in usage.values())
        ):
            raise ConfigError(
                f"{where}: `usage` must be a mapping like "
                "{input: 120, output: 30} of token counts"
            )
        calls = turn.get("tool_calls")
        if calls is not None and not isinstance(calls, (list, tuple)):
            raise ConfigError(
                f"{where}: `tool_calls` must be a list of {{name: ..., arguments: ...}} mappings"
            )
        for k, call in enumerate(calls or (), 1):
            if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
                raise ConfigError(
                    f"{where}: tool call {k} needs a `name` (the tool to call), "
                    "as in {name: search, arguments: {pattern: x}}"
                )
            if set(call) - {"name", "arguments"}:
                raise ConfigError(
                    f"{where}: tool call {k} has unknown keys "
                    f"{sorted(set(call) - {'name', 'arguments'})}; use name "
                    "and arguments"
                )


class ScriptedProvider:
    name = "scripted"

    def __init__(self, turns: list[dict[str, Any]], model: str = "scripted") -> None:
        self.turns = turns
        self.model = model

    @classmethod
    def from_file(cls, path: Path, model: str = "scripted") -> ScriptedProvider:
        return cls(load_script(path), model)

    def complete(self, request: ModelRequest) -> ModelReply:
        index = sum(1 for m in request.messages if m.get("role") == "assistant")
        return parse_completion(ChatCompletion.model_validate(self._completion(request, index)))

    def _completion(self, request: ModelRequest, index: int) -> dict[str, Any]:
        if index < len(self.turns):
            turn = self.turns[index]
        else:
            turn = {"content": "The script has no more turns; stopping."}
        calls = [
            {
                "id": f"call_{index + 1}_{k + 1}",
                "type": "function",
                "function": {"name": c["name"], "arguments": _arguments(c.get("arguments"))},
            }
            for k, c in enumerate(turn.get("tool_calls") or ())
        ]
        message: dict[str, Any] = {"role": "assistant", "content": turn.get("content")}
        if calls:
            message["tool_calls"] = calls
        usage = turn.get("usage") or {}
        prompt = orjson.dumps(request.messages)
        n_in = int(usage.get("input", len(prompt) // 4))
        n_out = int(usage.get("output", len(orjson.dumps(message)) // 4))
        return {
            "id": "scripted-" + hashlib.sha256(prompt).hexdigest()[:16],
            "object": "chat.completion",
            "created": 0,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": turn.get("finish_reason")
                    or ("tool_calls" if calls else "stop"),
                }
            ],
            "usage": {
                "prompt_tokens": n_in,
                "completion_tokens": n_out,
                "total_tokens": n_in + n_out,
            },
        }


def _arguments(raw: Any) -> str:
    if raw is None:
        return "{}"
    if isinstance(raw, str):
        return raw
    return orjson.dumps(raw).decode()

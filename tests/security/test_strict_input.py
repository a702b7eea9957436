"""Strict input at submission (the job-spec loader and the HTTP API): no
coercion of strings, floats or booleans where numbers or booleans are
expected, no duplicate keys in YAML or JSON, no NUL or other control
characters in commands, paths, globs and patterns, no environment variable
the sandbox would refuse, and no spec over the documented size cap. Each is
a SpecError (exit 2 / 422) naming the field; nothing is enqueued."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import SpecError
from orchestrator.run.jobspec import load_spec, parse_spec
from orchestrator.run.spec_input import MAX_SPEC_BYTES

# (step, numeric or boolean field) pairs a spec may set
NUMBERS = [
    ({"kind": "read", "path": "a"}, "max_output_bytes"),
    ({"kind": "read", "path": "a"}, "timeout_s"),
    ({"kind": "shell", "command": "ls"}, "max_output_bytes"),
    ({"kind": "search", "pattern": "x"}, "max_output_bytes"),
    ({"kind": "web_search", "query": "x"}, "limit"),
]
BOOLEANS = [
    ({"kind": "read", "path": "a"}, "continue_on_error"),
    ({"kind": "write", "path": "a", "content": "x"}, "overwrite"),
    ({"kind": "search", "pattern": "x"}, "ignore_case"),
]


def _spec(step: dict[str, Any]) -> str:
    return yaml.safe_dump({"name": "j", "targets": ["repo"], "steps": [step]})


def _problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(text)
    return caught.value.problems


@settings(max_examples=120, deadline=None)
@given(
    case=st.sampled_from(NUMBERS),
    value=st.one_of(
        st.integers(1, 10**6).map(str),
        st.floats(1.5, 1e6, allow_nan=False),
        st.booleans(),
        st.just("1e3"),
    ),
)
def test_a_number_is_never_coerced(case: tuple[dict[str, Any], str], value: object) -> None:
    step, field = case
    if field == "timeout_s" and isinstance(value, float):
        return  # a float field takes a float
    problems = _problems(_spec({**step, field: value}))
    assert any(p.startswith(f"steps[0].{field} ") for p in problems), problems


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(BOOLEANS), value=st.sampled_from(["yes", "true", "1", "on", 1, 0, 1.0]))
def test_a_boolean_is_never_coerced(case: tuple[dict[str, Any], str], value: object) -> None:
    step, field = case
    problems = _problems(_spec({**step, field: value}))
    assert any(p.startswith(f"steps[0].{field} ") for p in problems), problems


def test_numbers_and_booleans_written_as_such_still_load() -> None:
    step = {"kind": "read", "path": "a", "max_output_bytes": 100, "timeout_s": 5}
    assert parse_spec(_spec({**step, "continue_on_error": True})).steps[0].timeout_s == 5.0


CONTROL = [chr(c) for c in (*range(0, 9), *range(11, 32), 127)]
TEXT_FIELDS = [
    ({"kind": "shell", "command": "ls {}"}, "command"),
    ({"kind": "shell", "command": ["ls", "{}"]}, "command"),
    ({"kind": "shell", "command": "ls", "cwd": "s{}b"}, "cwd"),
    ({"kind": "read", "path": "a{}"}, "path"),
    ({"kind": "delete", "path": "{}a"}, "path"),
    ({"kind": "write", "path": "a{}", "content": "x"}, "path"),
    ({"kind": "search", "pattern": "x{}"}, "pattern"),
    ({"kind": "search", "pattern": "x", "glob": ["*.py{}"]}, "glob"),
    ({"kind": "list", "path": ".", "glob": ["{}"]}, "glob"),
]


def _fill(value: Any, char: str) -> Any:
    if isinstance(value, str):
        return value.replace("{}", char)
    if isinstance(value, list):
        return [_fill(v, char) for v in value]
    return value


@settings(max_examples=200, deadline=None)
@given(case=st.sampled_from(TEXT_FIELDS), char=st.sampled_from(CONTROL))
def test_control_characters_are_refused_in_commands_paths_and_patterns(
    case: tuple[dict[str, Any], str], char: str
) -> None:
    step, field = case
    filled = {k: _fill(v, char) for k, v in step.items()}
    if field == "command" and isinstance(step["command"], str) and char in " \t\n\r\x0b\x0c":
        return  # whitespace splitting a command string is just a separator
    text = json.dumps({"name": "j", "targets": ["repo"], "steps": [filled]})
    problems = _problems(text)
    assert any(p.startswith(f"steps[0].{field}") and "control character" in p for p in problems), (
        problems
    )


def test_a_command_keeps_its_lines_and_tabs() -> None:
    spec = parse_spec(_spec({"kind": "shell", "command": ["bash", "-c", "ls\n\techo x"]}))
    assert spec.steps[0].command[2] == "ls\n\techo x"


@pytest.mark.parametrize(
    "name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "BASH_ENV", "ENV", "GIT_DIR", "BASH_FUNC_ls%%"]
)
def test_an_env_the_sandbox_refuses_is_refused_at_submission(name: str) -> None:
    problems = _problems(_spec({"kind": "shell", "command": "ls", "env": {name: "x"}}))
    assert any(p.startswith("steps[0].env ") and name in p for p in problems), problems


def test_an_env_value_with_nul_or_a_bad_name_is_refused() -> None:
    assert _problems(_spec({"kind": "shell", "command": "ls", "env": {"A": "x\x00"}}))
    assert _problems(_spec({"kind": "shell", "command": "ls", "env": {"A=B": "x"}}))
    ok = parse_spec(_spec({"kind": "shell", "command": "ls", "env": {"NODE_ENV": "test"}}))
    assert ok.steps[0].env == {"NODE_ENV": "test"}


def test_duplicate_yaml_keys_are_refused_with_the_field() -> None:
    problems = _problems(
        "name: j\ntargets: [repo]\nsteps:\n  - kind: read\n    path: a\n    path: b\n"
    )
    assert any(p.startswith("steps[0].path ") and "duplicate key" in p for p in problems)


def test_a_spec_over_the_cap_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    big = _spec({"kind": "write", "path": "a", "content": "x" * (MAX_SPEC_BYTES + 1)})
    problems = _problems(big)
    assert "more than the" in problems[0]
    path = tmp_path / "big.yaml"
    path.write_text(big)
    with pytest.raises(SpecError, match="more than the"):
        load_spec(path)
    assert SpecError.exit_code == 2


# --- over HTTP ------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> Any:
    from fastapi.testclient import TestClient

    from orchestrator.api import create_app
    from orchestrator.config.settings import Settings
    from tests.api_helpers import tokens_setting

    (tmp_path / "ws" / "repo").mkdir(parents=True)
    s = Settings(
        _env_file=None,
        state_dir=tmp_path / "state",  # type: ignore[call-arg]
        api_tokens=json.loads(tokens_setting()),
        api_workspace_root=tmp_path / "ws",
    )
    with TestClient(create_app(s)) as c:
        yield c


def _post(client: Any, body: bytes) -> Any:
    from tests.api_helpers import auth

    return client.post(
        "/jobs", content=body, headers={**auth("submitter"), "Content-Type": "application/json"}
    )


def test_the_api_refuses_duplicate_json_keys_and_coercion_with_422(client: Any) -> None:
    dup = b'{"name": "j", "targets": ["repo"], "steps": [{"kind": "read", "path": "a", "path": "../b"}]}'
    r = _post(client, dup)
    assert r.status_code == 422, r.text
    assert "duplicate key 'path'" in r.text
    coerced = {
        "name": "j",
        "targets": ["repo"],
        "steps": [{"kind": "read", "path": "a", "max_output_bytes": "10"}],
    }
    r = _post(client, json.dumps(coerced).encode())
    assert r.status_code == 422
    assert r.json()["problems"][0]["field"] == "steps[0].max_output_bytes"
    nul = {
        "name": "j",
        "targets": ["repo"],
        "steps": [{"kind": "shell", "command": ["ls", "a\u0000"]}],
    }
    r = _post(client, json.dumps(nul).encode())
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "steps[0].command"
    env = {
        "name": "j",
        "targets": ["repo"],
        "steps": [{"kind": "shell", "command": "ls", "env": {"LD_PRELOAD": "/x.so"}}],
    }
    r = _post(client, json.dumps(env).encode())
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "steps[0].env"


def test_the_api_refuses_a_cancel_reason_that_is_not_text(client: Any) -> None:
    from tests.api_helpers import auth

    r = client.post(
        "/jobs/01a00000-0000-7000-8000-000000000000/cancel",
        json={"reason": 5},
        headers=auth("operator"),
    )
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "body.reason"

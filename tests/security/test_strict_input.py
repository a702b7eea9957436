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
from hypothesis import HealthCheck, given, settings
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


def test_git_identity_is_the_one_git_env_a_step_may_set() -> None:
    """The sandbox has no user configuration: a step that commits names its
    author and committer (text in the commit, never a path or a program)."""
    env = {f"GIT_{w}_{f}": "x" for w in ("AUTHOR", "COMMITTER") for f in ("NAME", "EMAIL", "DATE")}
    ok = parse_spec(_spec({"kind": "shell", "command": "git commit -qm x", "env": env}))
    assert ok.steps[0].env == env
    problems = _problems(_spec({"kind": "shell", "command": "ls", "env": {"GIT_EDITOR": "x"}}))
    assert any("GIT_EDITOR" in p for p in problems), problems


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


# --- every route: duplicate keys and no coercion ---------------------------------------

# Each route taking a JSON body, with a body it accepts as far as validation
# goes, and the role that may call it. The test below fails when a route with
# a body is added and not listed here.
BODY_ROUTES = {
    ("POST", "/jobs"): (
        "/jobs",
        "submitter",
        {"name": "j", "targets": ["repo"], "steps": [{"kind": "read", "path": "a"}]},
    ),
    ("POST", "/jobs/{job_id}/cancel"): (
        "/jobs/01a00000-0000-7000-8000-000000000000/cancel",
        "operator",
        {"reason": "enough"},
    ),
    ("POST", "/confirmations/{call_id:path}"): (
        "/confirmations/01a00000-0000-7000-8000-000000000000/1",
        "operator",
        {"decision": "deny", "reason": "no"},
    ),
}


def _body_routes(client: Any) -> set[tuple[str, str]]:
    from fastapi.routing import APIRoute

    from orchestrator.api.strict import StrictRoute

    found = set()
    routes = list(client.app.routes)
    while routes:
        route = routes.pop()
        inner = getattr(route, "original_router", None)  # an included router (FastAPI 0.16x)
        if inner is not None:
            routes += inner.routes
            continue
        if not isinstance(route, APIRoute):
            continue
        assert isinstance(route, StrictRoute), route.path  # every route checks its body
        if route.body_field is not None or "requestBody" in (route.openapi_extra or {}):
            found |= {(m, route.path) for m in route.methods}
    return found


def test_every_route_with_a_body_is_listed_and_strict(client: Any) -> None:
    assert _body_routes(client) == set(BODY_ROUTES)


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every object in `value`, by where it is."""
    out = [at] if isinstance(value, dict) else []
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for k, v in items:
        out += _paths(v, (*at, k))
    return out


def _with_duplicate(body: Any, where: tuple[Any, ...], key: str, value: Any) -> bytes:
    """`body` as JSON text, the object at `where` naming `key` a second time."""
    marker = "__dup_marker__"
    node = body
    for part in where:
        node = node[part]
    node[marker] = value
    text = json.dumps(body)
    return text.replace(f'"{marker}"', json.dumps(key))


def _field(where: tuple[Any, ...], key: str) -> str:
    out = ""
    for part in (*where, key):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=st.sampled_from(sorted(BODY_ROUTES)),
    pick=st.integers(0, 1000),
    value=st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.just("deny")),
)
def test_a_duplicate_key_anywhere_in_any_body_is_a_422_naming_it(
    client: Any, route: tuple[str, str], pick: int, value: Any
) -> None:
    from tests.api_helpers import auth

    url, role, good = BODY_ROUTES[route]
    body = json.loads(json.dumps(good))
    where = _paths(body)[pick % len(_paths(body))]
    node = body
    for part in where:
        node = node[part]
    key = sorted(node)[pick % len(node)]
    raw = _with_duplicate(body, where, key, value)
    r = client.post(url, content=raw, headers={**auth(role), "Content-Type": "application/json"})
    assert r.status_code == 422, (raw, r.text)
    fields = [p["field"] for p in r.json()["problems"]]
    named = _field(where, key)
    assert named in fields or f"body.{named}" in fields, (raw, fields)
    assert "duplicate key" in r.text


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=st.sampled_from(sorted(BODY_ROUTES)),
    pick=st.integers(0, 1000),
    wrong=st.sampled_from(["5", "1.5", "true", "null", "[]", "{}", "5e3"]),
)
def test_a_value_of_another_json_type_is_never_coerced(
    client: Any, route: tuple[str, str], pick: int, wrong: str
) -> None:
    """Each top-level scalar field of each body, given a value of another JSON
    type (a number as text, text as a number, ...): 422 naming that field.
    (The spec's own numbers and booleans: the tests at the top; `targets`
    takes one glob as text by design.)"""
    from tests.api_helpers import auth

    url, role, good = BODY_ROUTES[route]
    scalars = sorted(k for k, v in good.items() if isinstance(v, (str, int, float, bool)))
    key = scalars[pick % len(scalars)]
    value = json.loads(wrong)
    if type(value) is type(good[key]) or (value is None and key == "reason"):
        value = 5 if isinstance(good[key], str) else "5"
    raw = json.dumps({**good, key: value}).encode()
    r = client.post(url, content=raw, headers={**auth(role), "Content-Type": "application/json"})
    assert r.status_code == 422, (raw, r.text)
    fields = [p["field"] for p in r.json()["problems"]]
    assert key in fields or f"body.{key}" in fields or any(f.startswith(key) for f in fields), (
        raw,
        fields,
    )


def _routes(client: Any) -> list[Any]:
    from fastapi.routing import APIRoute

    out, todo = [], list(client.app.routes)
    while todo:
        route = todo.pop()
        inner = getattr(route, "original_router", None)
        if inner is not None:
            todo += inner.routes
        elif isinstance(route, APIRoute):
            out.append(route)
    return out


def test_every_number_or_flag_in_a_query_takes_one_spelling(client: Any) -> None:
    from orchestrator.api.strict import QueryBool, QueryInt

    wanted = {int: QueryInt, bool: QueryBool}
    for route in _routes(client):
        for param in route.dependant.query_params:
            kind = param.field_info.annotation
            if kind in wanted:
                strict = wanted[kind].__metadata__[0]  # type: ignore[attr-defined]
                assert strict in param.field_info.metadata, (route.path, param.name)


SLOPPY_NUMBERS = ["1.0", "+5", " 5", "5_0", "0x10", "5 ", "٥", "1e2", ""]
SLOPPY_FLAGS = ["yes", "on", "1", "t", "TRUE", "True", "no", "0", ""]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(["after_seq", "limit", "follow"]),
    number=st.sampled_from(SLOPPY_NUMBERS),
    flag=st.sampled_from(SLOPPY_FLAGS),
)
def test_a_query_number_or_flag_in_another_spelling_is_a_422_naming_it(
    client: Any, name: str, number: str, flag: str
) -> None:
    from tests.api_helpers import auth

    value = flag if name == "follow" else number
    r = client.get(
        "/sessions/01a00000-0000-7000-8000-000000000000/events",
        params={name: value},
        headers=auth("admin"),
    )
    assert r.status_code == 422, (name, value, r.text)
    assert [p["field"] for p in r.json()["problems"]] == [f"query.{name}"]
    r = client.post(
        f"/jobs?allow_destructive={flag}",
        content=b'{"name": "j", "targets": ["repo"], "steps": [{"kind": "read", "path": "a"}]}',
        headers={**auth("admin"), "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "query.allow_destructive"

"""A real allow-list (`commands.builtins: false`): only the programs the
policy allows run, whatever the built-in rules allow; `policy check
--explain` says which rules are in force and where each came from. And
elevation (`--allow-destructive`) only lifts asks inside the workspace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.guard.builtin_rules import BUILTIN_COMMAND_RULES
from orchestrator.guard.decision import decide_request
from orchestrator.guard.policy import DEFAULT_POLICY, combine, parse_policy
from tests.cli_helpers import cli, shape_env

ALLOW_LIST = {
    "name": "allow-list",
    "commands": {
        "default": "deny",
        "builtins": False,
        "rules": [{"id": "only-ls", "decision": "allow", "command": "ls"}],
    },
}
BUILTIN_ALLOWED = sorted(
    {r.tokens[0] for r in BUILTIN_COMMAND_RULES if r.decision == "allow" and r.path is None}
    - {"ls", "*"}
)


@settings(max_examples=200, deadline=None)
@given(
    program=st.sampled_from(BUILTIN_ALLOWED),
    args=st.lists(st.sampled_from(["-c", "x", "--version", "a.txt", "-e", "1"]), max_size=3),
)
def test_with_builtins_off_no_built_in_allow_lets_a_program_run(program: str, args: list[str]):
    pol = parse_policy(ALLOW_LIST)
    v = decide_request("shell", pol, argv=[program, *args])
    assert v.decision == "deny", (program, args, v)


@pytest.mark.parametrize(
    "line",
    ["bash -c 'ls'", "python3 -c 'print(1)'", "make", "node x.js", "rm -rf build", "ls | sh"],
)
def test_the_issue_examples_are_denied_in_an_allow_list(line: str) -> None:
    assert decide_request("shell", parse_policy(ALLOW_LIST), command=line).decision == "deny"
    # and `commands.default: deny` alone still lets the built-ins through (why the switch exists)
    if line.startswith(("bash", "python3", "make")):
        alone = parse_policy({"commands": {"default": "deny"}})
        assert decide_request("shell", alone, command=line).decision == "allow"


def test_the_listed_program_runs_and_built_in_denials_stay() -> None:
    pol = parse_policy(ALLOW_LIST)
    assert decide_request("shell", pol, command="ls -la src").decision == "allow"
    assert decide_request("shell", pol, command="ls .env").decision == "deny"


def test_one_allow_list_among_combined_policies_makes_the_whole_one() -> None:
    doc = combine(DEFAULT_POLICY.doc, parse_policy(ALLOW_LIST).doc)
    assert doc.commands.builtins is False


def test_the_switch_left_on_keeps_every_existing_policy_hash() -> None:
    assert "builtins" not in DEFAULT_POLICY.document["commands"]
    assert parse_policy(ALLOW_LIST).document["commands"]["builtins"] is False


def test_the_switch_takes_a_boolean_only() -> None:
    from orchestrator.guard.policy import PolicyError

    with pytest.raises(PolicyError, match="builtins"):
        parse_policy({"commands": {"builtins": "no"}})


def test_policy_check_explain_lists_rules_in_force_and_their_source(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "allow-list.yaml"
    path.write_text(yaml.safe_dump(ALLOW_LIST))
    env = shape_env(tmp_path)
    result = cli(env, "policy", "check", "--explain", "--json", "--policy", str(path))
    assert result.returncode == 0, result.stderr
    rows = {r["id"]: r for r in json.loads(result.stdout)["rules"]}
    assert rows["allow-bash"]["in_force"] is False
    assert "switched off" in rows["allow-bash"]["source"]
    assert rows["only-ls"] == {
        "id": "only-ls",
        "kind": "command",
        "decision": "allow",
        "source": "policy allow-list",
        "in_force": True,
        "matches": "ls",
    }
    assert rows["deny-secrets"]["source"] == "built-in" and rows["deny-secrets"]["in_force"]
    assert rows["commands-default"]["decision"] == "deny"
    text = cli(env, "policy", "check", "--explain", "--policy", str(path), "--", "make")
    assert text.returncode == 3
    assert "commands-default" in text.stdout and "switched off" in text.stdout


# --- elevation stays inside the workspace ---------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "rm -rf /",
        "rm -rf ~",
        "rm -rf ..",
        "rm -rf ../..",
        "rm -rf /*",
        'rm -rf "$HOME"',
        "rm -rf $HOME/",
        "cp a.txt /etc/profile",
        "echo x >> /etc/profile",
        "touch ~/.bashrc",
        "mv a.txt ../elsewhere",
    ],
)
def test_allow_destructive_never_elevates_outside_the_workspace(line: str) -> None:
    for elevated in (False, True):
        v = decide_request("shell", DEFAULT_POLICY, command=line, elevated=elevated)
        assert v.decision != "allow", (line, elevated, v)
    v = decide_request("shell", DEFAULT_POLICY, command=line, elevated=True)
    assert "workspace only" in " ".join(m.reason for m in v.matches) or v.decision == "deny"


@pytest.mark.parametrize("line", ["rm -rf build", "rm a.txt", "cp a.txt b.txt", "echo x > out.txt"])
def test_allow_destructive_still_elevates_inside_the_workspace(line: str) -> None:
    assert decide_request("shell", DEFAULT_POLICY, command=line).decision == "ask"
    v = decide_request("shell", DEFAULT_POLICY, command=line, elevated=True)
    assert v.decision == "allow", v


def test_a_file_tool_writing_outside_is_denied_not_elevated() -> None:
    from orchestrator.guard.decision import decide

    for path in ("/etc/passwd", "../x", "a/../../x"):
        for tool in ("write", "delete"):
            v = decide(tool, {"path": path, "content": "x"}, elevated=True)
            assert (v.decision, v.rule_id) == ("deny", "outside-workspace"), (tool, path, v)

"""Policy edges a user meets: an unknown tool, shell lines that hide what
they run or write, rule examples that contradict their rule, policy files
that do not load, and combining policies. Pure decisions: no fixture, no mock."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.guard.decision import decide, decide_request, normalize
from orchestrator.guard.policy import (
    DEFAULT_POLICY,
    PolicyError,
    combine,
    load_policy,
    parse_policy,
)
from orchestrator.guard.rules import Decision


def test_an_unknown_tool_is_denied_by_name():
    v = decide_request("teleport", DEFAULT_POLICY)
    assert (v.decision, v.rule_id) == ("deny", "unknown-tool")
    assert "'teleport'" in v.reason
    assert v.level is Decision.DENY


def test_a_network_tool_without_a_url_is_decided_by_its_tier_alone():
    net = parse_policy({"network": {"enabled": True, "allow_hosts": ["example.com"]}})
    v = decide("fetch", {}, net)
    assert (v.decision, v.rule_id) == ("allow", "tier-exec")


def test_reading_a_secret_by_path_is_denied_and_an_ordinary_file_is_not():
    v = decide("read", {"path": ".env"})
    assert (v.decision, v.rule_id) == ("deny", "deny-secrets")
    assert ".env" in v.reason
    assert decide("read", {"path": "src/a.py"}).decision == "allow"


@pytest.mark.parametrize("path", ["~/x", "/etc/passwd", "a\x00b", "../up"])
def test_paths_that_leave_the_workspace_do_not_normalize(path):
    assert normalize(path) is None


def test_normalize_cleans_a_path_inside_the_workspace():
    assert normalize("a/../b") == "b"
    assert normalize("x.py", cwd="src") == "src/x.py"


# -- shell lines ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "decision", "rule"),
    [
        ('echo hi > "$OUT"', "deny", "shell:dynamic-redirect"),
        ("cat < .env", "deny", "deny-secrets"),
        ("echo x > /dev/null", "allow", "allow-echo"),
        ("echo x > out.txt", "ask", "destructive-truncating-redirect"),
        ("echo x >> out.txt", "allow", "allow-echo"),
        ("sed -e 's/a/b/;e id' f.txt", "deny", "sed-exec"),
        ("sed --expression='1e id' f.txt", "deny", "sed-exec"),
        ("sed -e1e\\ id f.txt", "deny", "sed-exec"),
        ("sed -f script.sed f.txt", "deny", "sed-exec"),  # a script the policy cannot read
        ("sed -n 's/a/b/p' f.txt", "allow", "allow-sed"),
        ("awk 'BEGIN{system(\"id\")}'", "deny", "awk-exec"),
        ("./bin/tool x", "ask", "untrusted-program"),
        ("/usr/bin/ls -la", "allow", "allow-ls"),
        ("cat ~/.ssh/id_rsa", "deny", "deny-secrets"),
        ("curl --output=x https://example.com", "deny", "network-off"),
        ("git --no-pager -C sub push", "deny", "network-off"),
        ("git --no-pager log", "allow", "allow-git"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_shell_line_decision_names_its_rule(command, decision, rule):
    v = decide_request("shell", DEFAULT_POLICY, command=command)
    assert (v.decision, v.rule_id) == (decision, rule), v.reason


def test_an_untrusted_program_says_how_to_allow_it():
    v = decide_request("shell", DEFAULT_POLICY, command="./bin/tool x")
    assert "not a system program" in v.reason
    assert _suggested_rule(v.reason) == {
        "id": "allow-bin/tool",
        "decision": "allow",
        "command": "bin/tool",
    }


def _suggested_rule(reason: str) -> dict[str, str]:
    return yaml.safe_load(reason.split("commands.rules: ", 1)[1])


@pytest.mark.parametrize(
    ("command", "cwd"),
    [
        ("./.venv/bin/pytest -q tests", "."),
        (".venv/bin/python -m pytest", "."),
        ("../.venv/bin/python -m pytest", "sub"),
        ("/opt/venv/bin/python x.py", "."),
        ("'./my tools/run' --fast", "."),
    ],
)
def test_the_suggested_rule_for_an_untrusted_program_allows_it(command, cwd):
    """Issue 14: the rule the message suggests really matches the program."""
    asked = decide_request("shell", DEFAULT_POLICY, command=command, cwd=cwd)
    assert (asked.decision, asked.rule_id) == ("ask", "untrusted-program")
    rule = _suggested_rule(asked.reason)
    pol = parse_policy({"commands": {"rules": [rule]}})
    v = decide_request("shell", pol, command=command, cwd=cwd)
    assert (v.decision, v.rule_id) == ("allow", rule["id"]), v.reason
    assert [m.rule_id for m in v.matches] == [rule["id"]]


@pytest.mark.parametrize(
    ("command", "decision", "rule"),
    [
        (".venv/bin/python -m pytest", "allow", "venv-python"),
        ("./.venv/bin/python -m pytest", "allow", "venv-python"),
        ("sub/../.venv/bin/python x.py", "allow", "venv-python"),
        ("/work/repo/.venv/bin/python x.py", "allow", "repo-python"),
        (".venv/bin/ruff check .", "allow", "venv-tools"),
        (".venv/bin/pip install x", "deny", "venv-no-pip"),
        ("other/.venv/bin/python x.py", "ask", "untrusted-program"),
        ("/tmp/.venv/bin/python x.py", "ask", "untrusted-program"),
        ("python -m pytest", "allow", "allow-python"),
        ("/usr/bin/python3 x.py", "allow", "allow-python3"),
    ],
)
def test_a_rule_naming_a_program_by_path_decides_for_that_path_only(command, decision, rule):
    pol = parse_policy(
        {
            "commands": {
                "rules": [
                    {"id": "venv-python", "decision": "allow", "command": ".venv/bin/python"},
                    {"id": "venv-tools", "decision": "allow", "command": "./.venv/bin/*"},
                    {"id": "venv-no-pip", "decision": "deny", "command": ".venv/bin/pip"},
                    {
                        "id": "repo-python",
                        "decision": "allow",
                        "command": "/work/repo/.venv/bin/python",
                        "match": ["/work/repo/.venv/bin/python -V"],
                        "not_match": ["python -V", "/work/other/.venv/bin/python -V"],
                    },
                ]
            }
        }
    )
    v = decide_request("shell", pol, command=command)
    assert (v.decision, v.rule_id) == (decision, rule), v.reason


def test_a_program_from_an_untrusted_directory_is_not_the_system_one():
    v = decide_request("shell", DEFAULT_POLICY, command="/tmp/bin/ls -la")
    assert (v.decision, v.rule_id) == ("ask", "untrusted-program")


def test_copying_out_of_the_workspace_is_flagged_as_destructive():
    v = decide_request("shell", DEFAULT_POLICY, command="cp a.txt ~/x")
    assert v.decision == "ask"
    outside = [m for m in v.matches if m.rule_id == "outside-workspace"]
    assert outside and outside[0].destructive and "outside the workspace" in outside[0].reason


def test_a_url_argument_is_not_taken_for_a_path():
    net = parse_policy({"network": {"enabled": True}})
    v = decide_request("shell", net, command="curl https://example.com/.env")
    assert "deny-secrets" not in {m.rule_id for m in v.matches}


# -- rule examples and policy files ---------------------------------------------


def test_rule_examples_that_contradict_their_rule_are_all_listed():
    with pytest.raises(PolicyError) as caught:
        parse_policy(
            {
                "commands": {
                    "rules": [
                        {"id": "my-make", "decision": "allow", "command": "make *", "match": [""]}
                    ]
                },
                "paths": [
                    {
                        "id": "my-docs",
                        "decision": "deny",
                        "paths": ["docs/**"],
                        "match": ["src/a.py"],
                        "not_match": ["docs/x.md"],
                    }
                ],
            }
        )
    text = str(caught.value)
    assert "commands rule my-make: example '' should match 'make *' but does not" in text
    assert "paths rule my-docs: example 'src/a.py' matches none of ['docs/**']" in text
    assert "paths rule my-docs: example 'docs/x.md' should not match" in text


def test_a_missing_policy_file_is_a_policy_error_naming_the_file(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as caught:
        load_policy(missing)
    assert str(missing) in str(caught.value)
    assert caught.value.problems[0].startswith("cannot read the file:")


def test_a_policy_file_that_is_not_yaml_says_so(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tier: [exec\n", encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(bad)
    assert caught.value.problems[0].startswith("not valid YAML:")


# -- combining --------------------------------------------------------------------


def test_combining_nothing_is_the_default_and_one_policy_is_itself():
    assert combine() is DEFAULT_POLICY.doc
    assert combine(None) is DEFAULT_POLICY.doc
    one = parse_policy({"tier": "read-only"}).doc
    assert combine(one, None) is one


def test_combined_per_tool_call_caps_take_the_smaller():
    a = parse_policy({"session_limits": {"tool_calls": {"shell": 10, "write": 5}}}).doc
    b = parse_policy({"session_limits": {"tool_calls": {"shell": 3}}}).doc
    assert combine(a, b).session_limits.tool_calls == {"shell": 3, "write": 5}


@pytest.mark.parametrize(
    ("script", "verdict"),
    [
        ("sed -e1w/tmp/x f.txt", "deny"),  # GNU sed: the filename right after w
        ("sed '/foo/w /tmp/x' f.txt", "deny"),  # a regex address
        ("sed '\\%foo%W /tmp/x' f.txt", "deny"),  # a custom-delimiter address
        ("sed '1,5!e id' f.txt", "deny"),
        ("sed 's/a/b/w/tmp/x' f.txt", "deny"),
        ("sed -f prog.sed f.txt", "deny"),  # a script the policy cannot read
        ("sed -nf prog.sed f.txt", "deny"),
        ("sed -n '/warn/p' f.txt", "allow"),
        ("sed 's/e/w/g;s|/usr|/opt|' f.txt", "allow"),
        ("sed -i.conf 's/a/b/' f.txt", "ask"),  # in place: asks, not sed-exec
    ],
)
def test_sed_writes_and_executes_are_seen_in_every_spelling(script: str, verdict: str) -> None:
    v = decide_request("shell", DEFAULT_POLICY, command=script)
    assert v.decision == verdict, (script, v.reason)
    if verdict == "deny":
        assert v.rule_id == "sed-exec" and "writes files the policy cannot see" in v.reason

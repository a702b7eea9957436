"""Tiers, paths, quotas, rate limits, policy files and combining policies:
pure decisions, compared whole. No fixture, no mock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.errors import SpecError
from orchestrator.guard.decision import Usage, decide, decide_request, visible
from orchestrator.guard.policy import (
    DEFAULT_POLICY,
    PolicyError,
    combine,
    load_policy,
    parse_policy,
)
from orchestrator.run.jobspec import parse_spec

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("tier", "tool", "decision"),
    [
        ("read-only", "search", "allow"),
        ("read-only", "replace", "deny"),
        ("read-only", "shell", "deny"),
        ("read-write", "patch", "allow"),
        ("read-write", "shell", "deny"),
        ("exec", "shell", "allow"),
    ],
)
def test_a_tool_above_the_tier_is_denied_naming_the_flag_that_raises_it(tier, tool, decision):
    v = decide_request(tool, DEFAULT_POLICY, tier=tier, argv=["ls"])
    assert v.decision == decision
    if decision == "deny":
        assert v.rule_id == "tier" and "--tier" in v.reason and tier in v.reason


def test_the_strictest_tier_of_policy_and_caller_wins():
    p = parse_policy({"tier": "read-only"})
    assert decide_request("replace", p, tier="exec").rule_id == "tier"
    assert decide_request("replace", DEFAULT_POLICY, tier="read-only").rule_id == "tier"


@pytest.mark.parametrize(
    ("access", "path", "decision", "rule"),
    [
        ("read", "src/app.py", "allow", "tier-exec"),
        ("read", ".env", "deny", "deny-secrets"),
        ("read", "config/.env.local", "deny", "deny-secrets"),
        ("write", "deploy/tls.key", "deny", "deny-secrets"),
        ("write", ".git/hooks/pre-commit", "deny", "deny-git-internals-write"),
        ("write", ".github/workflows/ci.yml", "allow", "tier-exec"),
        ("read", "../other/file", "deny", "outside-workspace"),
        # file tools reach files only through the jail: outside is a deny
        ("write", "/etc/passwd", "deny", "outside-workspace"),
        ("write", "src/../../x", "deny", "outside-workspace"),
        ("read", "a/b/../c.txt", "allow", "tier-exec"),
    ],
)
def test_paths_are_decided_relative_to_the_workspace(access, path, decision, rule):
    v = decide_request(
        "write" if access == "write" else "read", DEFAULT_POLICY, paths=[(access, path)]
    )
    assert (v.decision, v.rule_id) == (decision, rule)


def test_globbing_tools_do_not_see_denied_files():
    assert visible(DEFAULT_POLICY, "src/a.py")
    assert not visible(DEFAULT_POLICY, ".env") and not visible(DEFAULT_POLICY, "k/id_rsa")


def test_deleting_through_the_filesystem_tool_asks_unless_elevated():
    assert decide("delete", {"path": "old.txt"}).decision == "ask"
    assert decide("delete", {"path": "old.txt"}, elevated=True).decision == "allow"


def test_a_session_quota_denies_the_call_that_would_exceed_it():
    p = parse_policy({"session_limits": {"tool_calls": {"shell": 3}, "cpu_s": 10}})
    fine = Usage(tool_calls={"shell": 2}, cpu_s=1.0)
    assert decide_request("shell", p, argv=["ls"], usage=fine).decision == "allow"
    v = decide_request("shell", p, argv=["ls"], usage=Usage(tool_calls={"shell": 3}))
    assert (v.decision, v.rule_id) == ("deny", "quota:tool_calls:shell")
    assert "3 of its 3" in v.reason
    v = decide_request("search", p, usage=Usage(cpu_s=12.5))
    assert (v.decision, v.rule_id) == ("deny", "quota:cpu_s")


def test_a_rate_limit_counts_the_window_before_now_and_says_when_to_retry():
    p = parse_policy({"rate_limits": {"shell": "3/minute"}})
    recent = (T0 - timedelta(seconds=50), T0 - timedelta(seconds=20), T0 - timedelta(seconds=5))
    v = decide_request("shell", p, argv=["ls"], usage=Usage(recent={"shell": recent}), now=T0)
    assert (v.decision, v.rule_id) == ("deny", "rate:shell")
    assert v.retry_after_s == pytest.approx(10.0)
    later = decide_request(
        "shell",
        p,
        argv=["ls"],
        usage=Usage(recent={"shell": recent}),
        now=T0 + timedelta(seconds=11),
    )
    assert later.decision == "allow"


def test_policy_rules_extend_the_builtins_and_deny_still_wins():
    p = parse_policy(
        {
            "commands": {
                "default": "deny",
                "rules": [
                    {
                        "id": "allow-terraform-plan",
                        "decision": "allow",
                        "command": "terraform plan",
                        "match": ["terraform plan -out x"],
                        "not_match": ["terraform apply"],
                    },
                    {"id": "allow-sudo", "decision": "allow", "command": "sudo"},
                ],
            }
        }
    )
    assert decide_request("shell", p, command="terraform plan -out x").decision == "allow"
    assert decide_request("shell", p, command="terraform apply").rule_id == "commands-default"
    v = decide_request("shell", p, command="sudo id")
    assert (v.decision, v.rule_id) == ("deny", "deny-sudo")


def test_a_rule_whose_examples_do_not_hold_fails_the_load_with_every_problem(tmp_path):
    f = tmp_path / "policy.yaml"
    f.write_text(
        "commands:\n  rules:\n"
        "    - {id: a, decision: allow, command: git diff, match: [git push]}\n"
        "    - {id: b, decision: deny, command: rm, not_match: [rm -f x]}\n"
        "    - {id: allow-ls, decision: deny, command: ls}\n"
    )
    with pytest.raises(PolicyError) as err:
        load_policy(f)
    text = str(err.value)
    assert "rule a: example 'git push' should match" in text
    assert "rule b: example 'rm -f x' should not match" in text
    assert "'allow-ls' is used more than once" in text


def test_a_malformed_policy_file_names_each_field(tmp_path):
    f = tmp_path / "policy.yaml"
    f.write_text("tier: root\nrate_limits: {shell: often}\n")
    with pytest.raises(PolicyError) as err:
        load_policy(f)
    assert "tier" in str(err.value) and "COUNT/UNIT" in str(err.value)


def test_a_policy_inside_a_job_spec_reports_its_line_and_column():
    with pytest.raises(SpecError) as err:
        parse_spec(
            "name: j\ntargets: [a]\nsteps:\n  - kind: search\n    pattern: x\n"
            "policy:\n  tier: god\n"
        )
    assert "policy.tier (line 7, column 9)" in str(err.value)


def test_combining_policies_keeps_the_strictest_of_each_setting():
    a = parse_policy(
        {
            "name": "job",
            "tier": "exec",
            "network": {"enabled": True, "allow_hosts": ["packages.example.org", "github.com"]},
            "rate_limits": {"shell": "10/minute"},
            "allow_destructive": True,
            "limits": {"wall_s": 100},
        }
    ).doc
    b = parse_policy(
        {
            "name": "team",
            "tier": "read-write",
            "commands": {"default": "deny"},
            "network": {"enabled": True, "allow_hosts": ["packages.example.org"]},
            "rate_limits": {"shell": "1/s"},
            "limits": {"cpu_s": 50},
        }
    ).doc
    c = combine(a, b)
    assert (c.name, c.tier, c.commands.default, c.allow_destructive) == (
        "job+team",
        "read-write",
        "deny",
        False,
    )
    assert c.network.enabled and c.network.allow_hosts == ("packages.example.org",)
    assert c.rate_limits == {"shell": "10/minute"}
    assert (c.limits.wall_s, c.limits.cpu_s) == (100, 50)


def test_the_policy_hash_changes_with_the_policy():
    assert parse_policy({"tier": "read-only"}).hash != DEFAULT_POLICY.hash
    assert parse_policy({}).hash == parse_policy({}).hash


def test_an_empty_host_list_means_any_host_so_only_real_lists_narrow():
    anyhost = parse_policy({"name": "a", "network": {"enabled": True}}).doc
    pypi = parse_policy(
        {"name": "b", "network": {"enabled": True, "allow_hosts": ["packages.example.org"]}}
    ).doc
    github = parse_policy(
        {"name": "c", "network": {"enabled": True, "allow_hosts": ["github.com"]}}
    ).doc
    assert combine(anyhost, pypi).network.allow_hosts == ("packages.example.org",)
    assert combine(pypi, anyhost).network.enabled
    disjoint = combine(pypi, github).network
    assert not disjoint.enabled, "no host in common must leave no network, not any host"


def test_a_host_list_keeps_shell_commands_off_the_network():
    """The sandbox cannot hold a process to a host list, so it fails closed."""
    listed = parse_policy(
        {"name": "p", "tier": "exec", "network": {"enabled": True, "allow_hosts": ["github.com"]}}
    )
    open_net = parse_policy({"name": "p", "tier": "exec", "network": {"enabled": True}})
    assert not listed.doc.network.for_shell and open_net.doc.network.for_shell
    v = decide_request("shell", listed, command="git fetch origin")
    assert (v.decision, v.rule_id) == ("deny", "network-hosts-shell")
    assert "remove `network.allow_hosts`" in v.reason
    assert decide_request("shell", open_net, command="git fetch origin").decision == "allow"

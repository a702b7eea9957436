"""`audit verify --recheck-policy`: which recorded decisions a new policy
would change, from the events alone."""

from __future__ import annotations

import json
from pathlib import Path

from events import payloads as p
from events.envelope import NewEvent
from events.projections import fold
from events.store import open_store
from orchestrator.audit.recheck import Change, recheck
from orchestrator.guard.decision import decide
from orchestrator.guard.policy import DEFAULT_POLICY, parse_policy
from tests.cli_helpers import cli, shape_env


def recorded(sid: str, calls: list[tuple[str, dict]]) -> list[NewEvent]:
    out = [
        NewEvent.create(
            p.SessionStarted(job_id="j", target="/w", steps=()),
            actor="worker:w",
            correlation_id="j",
        )
    ]
    for i, (tool, args) in enumerate(calls, start=1):
        verdict = decide(tool, args, DEFAULT_POLICY)
        out += [
            NewEvent.create(
                p.ToolCallRequested(call_id=f"{sid}/{i}", turn=i, tool=tool, args=args),
                actor="worker:w",
                correlation_id="j",
            ),
            NewEvent.create(
                p.PermissionDecided(
                    call_id=f"{sid}/{i}",
                    decision=verdict.decision,
                    rule_id=verdict.rule_id,
                    policy_hash=DEFAULT_POLICY.hash,
                    reason=verdict.reason,
                ),
                actor="worker:w",
                correlation_id="j",
            ),
        ]
    return out


CALLS = [
    ("shell", {"kind": "shell", "command": ["curl", "-s", "https://example.com"]}),
    ("shell", {"kind": "shell", "command": ["python3", "-m", "pytest"]}),
    ("replace", {"kind": "replace", "pattern": "a", "replacement": "b"}),
]


def test_recheck_lists_exactly_the_decisions_a_stricter_policy_changes(tmp_path: Path):
    store = open_store(str(tmp_path / "e.sqlite"), upgrade=True)
    events = store.append("s1", recorded("s1", CALLS), 0)
    ledger = fold(events).ledger
    strict = parse_policy({"name": "no-python", "tier": "read-only"})
    assert [(c.seq, c.tool, c.was, c.now, c.now_rule) for c in recheck("s1", ledger, strict)] == [
        (5, "shell", "allow", "deny", "tier"),
        (7, "replace", "allow", "deny", "tier"),
    ]
    assert recheck("s1", ledger, DEFAULT_POLICY) == []
    networked = parse_policy({"network": {"enabled": True}})
    assert recheck("s1", ledger, networked) == [
        Change(
            "s1",
            3,
            "s1/1",
            "shell",
            "deny",
            "network-off",
            "allow",
            "net-curl",
            "`curl -s https://example.com`: curl talks to the network",
        )
    ]


def test_audit_verify_recheck_policy_from_a_file(tmp_path: Path):
    env = shape_env(tmp_path)
    store = open_store(str(tmp_path / "state" / "events.sqlite"), upgrade=True)
    store.append("s1", recorded("s1", CALLS), 0)
    policy = tmp_path / "strict.yaml"
    policy.write_text("name: strict\ntier: read-write\n")
    result = cli(env, "audit", "verify", "--recheck-policy", str(policy), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)["recheck"]
    assert data["decisions"] == 3
    assert [(c["seq"], c["now_rule"]) for c in data["changed"]] == [(5, "tier")]
    text = cli(env, "audit", "verify", "--recheck-policy", str(policy)).stdout
    assert "1 of 3 recorded decision(s) would change" in text

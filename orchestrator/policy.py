"""Permission decisions: pure functions from a request and a policy.

This release ships one policy, `default-allow`: every tool request inside the
session's workspace is allowed. The decision is still recorded as a
PermissionDecided event (rule id and policy hash) so the ledger exists from
day one and later policies can be re-checked against history.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class Policy:
    name: str
    document: dict[str, Any]

    @property
    def hash(self) -> str:
        return hashlib.sha256(orjson.dumps(self.document, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Verdict:
    decision: str        # allow | deny | ask
    rule_id: str
    reason: str


DEFAULT_POLICY = Policy("default-allow", {"version": 1, "tier": "exec",
                                          "rules": [{"id": "default-allow", "decision": "allow"}]})


def decide(tool: str, args: dict[str, Any], policy: Policy = DEFAULT_POLICY) -> Verdict:
    """The verdict for one tool request under `policy`."""
    return Verdict("allow", "default-allow", f"{tool} allowed by the default policy")

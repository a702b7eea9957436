"""Re-deciding recorded requests under another policy: "if we had shipped
this policy last month, which actions would it have blocked?"

Pure: a session's permission ledger (rebuilt from its events) and a policy in,
every decision that would change out. Quotas and rate limits are not
re-decided (they depend on the order and timing of what really ran); the
tier, path, command and destructive rules are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from events.projections import PermissionLedger
from orchestrator.guard.decision import decide
from orchestrator.guard.policy import Policy


@dataclass(frozen=True)
class Change:
    stream_id: str
    seq: int  # of the recorded PermissionDecided
    call_id: str
    tool: str
    was: str
    was_rule: str
    now: str
    now_rule: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def recheck(stream_id: str, ledger: PermissionLedger, policy: Policy) -> list[Change]:
    """Every recorded decision `policy` would decide differently."""
    changes = []
    for entry in ledger.entries:
        if entry.decision is None:
            continue
        verdict = decide(entry.tool, dict(entry.args), policy)
        if verdict.decision != entry.decision:
            changes.append(
                Change(
                    stream_id,
                    entry.seq,
                    entry.call_id,
                    entry.tool,
                    entry.decision,
                    entry.rule_id or "",
                    verdict.decision,
                    verdict.rule_id,
                    verdict.reason,
                )
            )
    return changes


def recheck_all(
    ledgers: Iterable[tuple[str, PermissionLedger]], policy: Policy
) -> tuple[int, list[Change]]:
    """(decisions rechecked, changes) over many sessions."""
    total, changes = 0, []
    for stream_id, ledger in ledgers:
        total += sum(1 for e in ledger.entries if e.decision is not None)
        changes += recheck(stream_id, ledger, policy)
    return total, changes

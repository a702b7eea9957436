"""PermissionLedger: for every tool request, the decision, the rule that
matched, the policy version and who confirmed, folded by `LedgerFold`."""

from __future__ import annotations

from typing import Literal

from events import payloads as p
from events.envelope import construct_trusted
from events.projections.frozen import Fields, Frozen, Handler, Items
from events.projections.window import KEEP


class LedgerEntry(Frozen):
    call_id: str
    seq: int  # of the PermissionDecided event
    tool: str
    args: dict[str, object]
    decision: p.Decision | None = None
    rule_id: str | None = None
    policy_hash: str | None = None
    reason: str = ""
    decided_by: str | None = None
    confirmed_by: str | None = None
    confirmation: Literal["granted", "denied"] | None = None


class PermissionLedger(Frozen):
    entries: tuple[LedgerEntry, ...] = ()


class LedgerFold:
    """A PermissionLedger in progress. Decisions and answers go to the newest
    entry of their call. A live fold keeps the last KEEP entries and those
    still waiting for a decision or an answer."""

    __slots__ = ("_entries", "_window")

    def __init__(self, start: PermissionLedger, live: bool = False) -> None:
        self._entries = Items(LedgerEntry, start.entries, "call_id")
        self._window = KEEP if live else None

    def requested(self, pl: Fields, e: Fields) -> None:
        self._entries.append(
            {
                "call_id": pl["call_id"],
                "seq": e["seq"],
                "tool": pl["tool"],
                "args": pl["args"],
                "decision": None,
                "rule_id": None,
                "policy_hash": None,
                "reason": "",
                "decided_by": None,
                "confirmed_by": None,
                "confirmation": None,
            }
        )

    def decided(self, pl: Fields, e: Fields) -> None:
        entry = self._entries.newest(pl["call_id"])
        if entry is not None:
            entry.update(
                decision=pl["decision"],
                rule_id=pl["rule_id"],
                seq=e["seq"],
                policy_hash=pl["policy_hash"],
                reason=pl["reason"],
                decided_by=e["actor"],
            )

    def _answer(self, answer: str, pl: Fields) -> None:
        """Every answer is recorded, a late or repeated one too (the session's
        confirmation keeps the first): the ledger says who answered last."""
        entry = self._entries.newest(pl["call_id"])
        if entry is not None:
            entry.update(confirmation=answer, confirmed_by=pl["by"])

    def granted(self, pl: Fields, e: Fields) -> None:
        self._answer("granted", pl)

    def denied(self, pl: Fields, e: Fields) -> None:
        self._answer("denied", pl)

    def result(self) -> PermissionLedger:
        ledger: PermissionLedger = construct_trusted(
            PermissionLedger, {"entries": self._entries.freeze(self._window, _open)}
        )
        return ledger


def _open(e: LedgerEntry) -> bool:
    return e.decision is None or (e.decision == "ask" and e.confirmation is None)


ON: dict[str, Handler] = {
    "ToolCallRequested": LedgerFold.requested,
    "PermissionDecided": LedgerFold.decided,
    "ConfirmationGranted": LedgerFold.granted,
    "ConfirmationDenied": LedgerFold.denied,
}

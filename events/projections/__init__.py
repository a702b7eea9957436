"""Pure projections of a session's events: its state, quota usage and
permission ledger (and a job's own state), as frozen models.

One module per projection holds its models and its fold: handlers, one per
event type, that update a mutable working copy; `fold` runs them and freezes
the result once, so folding costs no copy per event. No clock, no I/O:
everything a projection knows comes from the events.
"""

from events.projections.agent import AgentCall, AgentEntry, AgentState
from events.projections.folder import (
    Folder,
    Projections,
    apply,
    apply_session,
    fold,
    fold_records,
)
from events.projections.jobs import JobState, apply_job
from events.projections.ledger import LedgerEntry, PermissionLedger
from events.projections.quota import RATE_WINDOW, QuotaUsage
from events.projections.session import (
    Confirmation,
    FileChange,
    PendingChange,
    SessionState,
    ToolCall,
    Turn,
)
from events.projections.window import Window

__all__ = [
    "RATE_WINDOW",
    "AgentCall",
    "AgentEntry",
    "AgentState",
    "Confirmation",
    "FileChange",
    "Folder",
    "JobState",
    "LedgerEntry",
    "PendingChange",
    "PermissionLedger",
    "Projections",
    "QuotaUsage",
    "SessionState",
    "ToolCall",
    "Turn",
    "Window",
    "apply",
    "apply_job",
    "apply_session",
    "fold",
    "fold_records",
]

"""What every event passes before it is stored: the one list of event filters.

Every composition root that opens a store for writing (the worker's
`tasks/deps.py`, the CLI's `cli/root.py`, the API's `api/deps.py`, the secret
recorder) builds its filters here, so a new protection is added in one place
and no writer can skip it. Order matters: masking first (what is stored is
what the model and the log may see), then encryption of the forgettable
fields (the chain hashes the ciphertext).
"""

from __future__ import annotations

from typing import Any

from events.store import EventFilter


def event_filters(settings: Any) -> tuple[EventFilter, ...]:
    """The filters an appending store applies, in order, for these settings."""
    filters: list[EventFilter] = []
    return tuple(filters)

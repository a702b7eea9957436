"""What every event passes before it is stored: the one list of event filters.

Every composition root that opens a store for writing (the worker's
`tasks/deps.py`, the CLI's `cli/root.py`, the API's `api/deps.py`, the secret
recorder) builds its filters here, so a new protection is added in one place
and no writer can skip it. Order matters: masking first (what is stored is
what the model and the log may see), then sealing of the forgettable fields
(the chain hashes the ciphertext; a filter that reveals comes last).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from events.sealing import Kek, KeyRing, Sealer
from orchestrator import lazy
from orchestrator.audit import kek as kek_mod
from orchestrator.config.seen import known_values
from orchestrator.config.settings import Settings

if TYPE_CHECKING:
    from events.keyring import SqlKeyRing
    from events.store import EventFilter

# SQLAlchemy and the masking rules load with the store that writes, not with
# `status`'s reader (bench/cli_startup.py).
_keyring = lazy.module("events.keyring")
_event_masking = lazy.module("orchestrator.guard.event_masking")


def keyring(settings: Settings) -> SqlKeyRing | None:
    """The data keys of the configured store, or None when no KEK is configured."""
    kek = kek_mod.for_settings(settings)
    return _keyring.SqlKeyRing(settings.effective_store_url, kek) if kek is not None else None


def reveal(
    settings: Settings, keys: Callable[[Kek], KeyRing]
) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """How a reader that opens no store (`events.quickread`) opens sealed
    fields as the store `event_filters` builds would: the same `Sealer`'s
    reveal, over `keys(kek)`; None when these settings seal nothing (the
    store then leaves sealed fields as stored too)."""
    kek = kek_mod.for_settings(settings) if settings.seal_payloads else None
    return None if kek is None else Sealer(keys(kek)).reveal


def event_filters(settings: Settings) -> tuple[EventFilter, ...]:
    """The filters an appending store applies, in order, for these settings."""
    # Masking first: the known values of these settings (and those read in
    # this process), the credential shapes, secret-named env entries.
    filters: list[EventFilter] = [_event_masking.mask_event(lambda: known_values(settings))]
    if settings.seal_payloads:
        keys = keyring(settings)
        if keys is not None:
            filters.append(Sealer(keys))
    return tuple(filters)

"""The masking step every event passes before it is hashed and stored.

    store = SqlEventStore(url, filters=orchestrator.audit.protect.event_filters(settings))
    # = [mask_event(lambda: known_values(settings)), Sealer(keys)]

The store applies its filters in order to each event of an append, before the
batch is sealed (`events.store`); masking goes first, so whatever comes after
it (encryption) only ever sees masked text and the chain hashes what is kept.

What is masked: every string anywhere in the payload (job specs, step args
and env, tool output, reasons, diffs, prompts, model replies, errors), with
`orchestrator.guard.masking.mask`: the known values in every encoding and the
credential shapes. A dictionary entry whose key names a secret the way an
environment variable does (`DB_PASSWORD`, `GITHUB_TOKEN`, `aws_secret_key`)
has its whole string value masked, whatever it looks like: a step's own
secret env is masked even when nobody declared the value.

What is not: dictionary keys, the envelope (ids, actor, correlation), strings
that are integrity data (a sha256 hex digest, a UUID), and the payloads of
`StreamHead` and `AuditDigest` (hashes and signatures that must verify).

Pure: no settings, no store; the known values come from the callable the
composition root passes in (read again for each append: a secret read later
in the process is masked from then on). A filter remembers the short strings
it found clean for the known values of the moment (`mask_data`'s `clean`):
most strings of an event repeat from step to step, and scanning them again
was most of the filter's time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from events.envelope import NewEvent
from orchestrator.guard.credentials import secret_name
from orchestrator.guard.masking import MASK, mask

__all__ = ["EventFilter", "mask_event", "mask_data", "UNMASKED_TYPES"]

EventFilter = Callable[[str, NewEvent], NewEvent]
Known = Iterable[str] | Callable[[], Iterable[str]]

UNMASKED_TYPES = frozenset({"StreamHead", "AuditDigest"})
_INTEGRITY = re.compile(
    r"[0-9a-f]{64}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?:/\d+)?"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_NOT_SECRET_NAMES = frozenset({"PWD", "OLDPWD"})  # the working directory


CLEAN_KEPT = 4096  # short strings a filter remembers as needing no mask
CLEAN_LEN = 256


def _secret_key(key: object) -> bool:
    return isinstance(key, str) and _secret_name(key)


@lru_cache(maxsize=1024)
def _secret_name(key: str) -> bool:
    """Payload keys are a few dozen field and variable names: each is judged once."""
    return (
        key not in _NOT_SECRET_NAMES
        and _ENV_NAME.fullmatch(key) is not None
        and secret_name().search(key) is not None
    )


def mask_data(value: Any, secrets: frozenset[str], clean: set[str] | None = None) -> Any:
    """`value` (JSON data) with every string masked; the same object when
    nothing changed (so an unchanged event is not rebuilt). `clean`: short
    strings that `mask` left as they were with these same `secrets` (a tool
    name, a rule, a summary that every step repeats): not scanned again, and
    the ones found so are added (they are stored as they are anyway)."""
    if isinstance(value, str):
        if not value or (clean is not None and value in clean) or _INTEGRITY.fullmatch(value):
            return value
        masked = mask(value, secrets)
        if clean is not None and masked == value and len(value) <= CLEAN_LEN:
            if len(clean) >= CLEAN_KEPT:
                clean.clear()
            clean.add(value)
        return masked
    if isinstance(value, dict):
        out, changed = {}, False
        for k, v in value.items():
            if isinstance(v, str) and v and v != MASK and _secret_key(k):
                new: Any = MASK
            else:
                new = mask_data(v, secrets, clean)
            changed = changed or new is not v
            out[k] = new
        return out if changed else value
    if isinstance(value, list | tuple):
        items = [mask_data(v, secrets, clean) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return items
    return value


def mask_event(known_values: Known) -> EventFilter:
    """The store filter that masks an event's payload (see the module docstring)."""

    # The strings found clean, for the known values they were masked with
    # (a value learned later empties them).
    clean: tuple[frozenset[str], set[str]] = (frozenset(), set())

    def apply(stream_id: str, event: NewEvent) -> NewEvent:
        nonlocal clean
        if event.type in UNMASKED_TYPES:
            return event
        values = frozenset(known_values() if callable(known_values) else known_values)
        held = clean  # this call's pair, whatever another thread swaps in meanwhile
        if values != held[0]:
            held = clean = (values, set())
        data = event.payload.model_dump(mode="json")
        masked = mask_data(data, values, held[1])
        if masked is data:
            return event
        model = type(event.payload)
        try:
            payload = model.model_validate(masked)
        except ValidationError:
            # A mask where the model wants a narrower type: keep the masked
            # text anyway (what is hashed is the JSON data, never the original).
            payload = model.model_construct(**masked)
        return event.model_copy(update={"payload": payload})

    return apply

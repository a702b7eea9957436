"""Every secret value this process has read, and every secret of the
settings passed in: what the masker must hide (`known_values`).

Its own module because the secret store (which records reads), the
configuration report (which masks what it prints) and the event filters
(`orchestrator.audit.protect`, which the secret store's recorder uses) all
need it, and none may import the others. It reads no settings itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

_lock = threading.Lock()
_read: set[str] = set()
_grown = 0  # how often `_read` grew: `known_values` reuses its answer until it does


def remember(value: str) -> None:
    global _grown
    with _lock:
        if value not in _read:
            _read.add(value)
            _grown += 1


def process_values() -> list[str]:
    """Every secret value read in this process so far."""
    with _lock:
        return sorted(_read)


_installed: Any = None  # the settings a composition root installed


def install(settings: Any) -> None:
    """The settings whose secrets `known_values()` (no argument) adds: called
    by each composition root, for code that masks without settings at hand
    (log lines, error messages)."""
    global _installed
    _installed = settings


def known_values(settings: Any = None, *, extra: Iterable[str] = ()) -> list[str]:
    """Every secret value read in this process, plus every SecretStr of
    `settings` (default: the installed ones, if any) and the passwords in its
    store, broker and result backend URLs, plus `extra` (a step's own secret
    env, a key a caller holds)."""
    s = settings if settings is not None else _installed
    base = _known(s)
    more = {v for v in extra if v}
    return sorted(more.union(base)) if more - base else sorted(base)


# (settings, `_grown` then, the values): every event a worker stores asks
# (the masking filter), and the answer changes only when either does.
_last: tuple[Any, int, frozenset[str]] | None = None


def _known(s: Any) -> frozenset[str]:
    global _last
    last, grown = _last, _grown
    if last is not None and last[0] is s and last[1] == grown:
        return last[2]
    with _lock:
        values = frozenset(_read)
    found = values | _setting_values(s) if s is not None else values
    _last = (s, grown, found)
    return found


# The settings object itself (not its id: a new object can reuse a freed id).
_settings_values: tuple[Any, frozenset[str]] | None = None


def _setting_values(s: Any) -> frozenset[str]:
    """The settings' secrets, worked out once per settings object (every log
    line asks)."""
    global _settings_values
    if _settings_values is not None and _settings_values[0] is s:
        return _settings_values[1]
    found: set[str] = set()
    for name in type(s).model_fields:
        v = getattr(s, name)
        if isinstance(v, SecretStr) and v.get_secret_value():
            found.add(v.get_secret_value())
    for url in (s.store_url, s.broker_url, s.result_backend):
        try:
            password = urlsplit(url).password if url else None
        except ValueError:
            password = None
        if password:
            found |= {password, unquote(password)}
    _settings_values = (s, frozenset(found))
    return _settings_values[1]

"""Every secret value this process has read: what the masker must hide.

Its own module because both the secret store (which records reads) and the
configuration report (which masks what it prints) need it, and neither may
import the other.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_read: set[str] = set()


def remember(value: str) -> None:
    with _lock:
        _read.add(value)


def process_values() -> list[str]:
    """Every secret value read in this process so far."""
    with _lock:
        return sorted(_read)

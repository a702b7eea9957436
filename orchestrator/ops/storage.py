"""Whether the embedded store can take writes: disk full, read-only.

A full disk under SQLite leaves reads working (so `status` said `running`
and health said ok) while every append fails. This names the cause from the
file system itself, for `status`, `health`/`doctor` and the worker's
heartbeat. A server store (PostgreSQL) reports its own disk in its errors:
`events.errors.named_cause` names those.
"""

from __future__ import annotations

from events.errors import filesystem_problem
from events.urls import sqlite_path

MIN_FREE_BYTES = 1024 * 1024  # below this an append of a large step may not fit


def write_problem(url: str, min_free: int = MIN_FREE_BYTES) -> str | None:
    """ "disk full at PATH (N KiB free)" or "read-only store at PATH", else None."""
    path = sqlite_path(url)
    return None if path is None else filesystem_problem(path, min_free)

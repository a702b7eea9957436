"""Several streams' tails in one query (`SqlEventStore.read_tails`): a step
reads its session's new events and its job's (a cancel request?) in one
round trip instead of two."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

Raw = tuple[int, bytes, str]  # position, body as stored, hash


@cache
def tails_sql(n: int, param: str) -> str:
    """One SELECT per stream, told apart by their first column, each in seq order."""
    one = "SELECT {k}, seq, position, body, hash FROM events WHERE stream_id = {p} AND seq > {p}"
    return " UNION ALL ".join(one.format(k=k, p=param) for k in range(n)) + " ORDER BY 1, 2"


def split_tails(rows: Iterable[Any], n: int) -> list[list[Raw]]:
    """The rows of `tails_sql` as n streams' (position, body, hash) lists."""
    out: list[list[Raw]] = [[] for _ in range(n)]
    for k, _, position, body, hash_ in rows:
        out[k].append((position, bytes(body), hash_))
    return out

"""The live part of a session's projections: what a worker needs to run its
next step, bounded whatever the history, so a snapshot of it is too.

A live state (`Projections.live()`, what `events.replay.replay` and the
runner fold) keeps its scalars, quota, pending changes and everything still
in play: calls not finished, confirmations not answered, decisions not
taken, the conversation's last few entries and the calls and turns they
name. Of the rest it keeps the last `KEEP` items of each list, and instead
of every file changed and the patch, a `Window`: the count of paths changed
and their digest (what policy limits and `SessionCompleted` count). Readers
of the whole history (the prompt, `audit replay`, the API, `watch`, the
diagnosis) fold it from the stream on demand (`events.history`).

A full state (`Projections()`, `fold` with no start) keeps everything, as
before. Both come from the same handlers. What a live state drops never
comes back: an item is dropped once it is finished and out of the window,
and no later event makes a finished item live again, so where snapshots are
taken does not change the result (replay == live).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from hashlib import blake2b

from events.projections.frozen import Frozen

KEEP = 16  # finished calls, turns, confirmations and ledger entries kept
AGENT_KEEP = 4  # conversation entries kept (the agent decides from the last)
# A path's digest: 12 bytes of blake2b (collisions: about n^2 / 2^97, never in
# practice) as 16 base64 characters, so the digests stay one sorted string
# that is searched and grown as it is, never decoded.
_W = 16


class Window(Frozen):
    """What a live state keeps of the history and the plan it does not hold."""

    paths: str = ""  # the digests of the distinct paths changed, sorted, end to end
    steps: int = 0  # len(SessionStarted.steps): a live state keeps no step names

    @property
    def files(self) -> int:
        """Distinct paths changed: the full state's len(changed_paths)."""
        return len(self.paths) // _W


def path_digest(path: str) -> str:
    return base64.b64encode(blake2b(path.encode(), digest_size=12).digest()).decode()


def _at(paths: str, d: str) -> int:
    """Where digest `d` is, or would go, in `paths` (a character offset)."""
    lo, hi = 0, len(paths) // _W
    while lo < hi:
        mid = (lo + hi) // 2
        if paths[mid * _W : mid * _W + _W] < d:
            lo = mid + 1
        else:
            hi = mid
    return lo * _W


def new_digests(paths: str, changed: Iterable[str]) -> set[str]:
    """The digests of those of `changed` that are not in `paths` yet."""
    out = set()
    for d in map(path_digest, changed):
        i = _at(paths, d)
        if paths[i : i + _W] != d:
            out.add(d)
    return out


def merged(paths: str, new: set[str]) -> str:
    """`paths` with `new` (digests not in it) in their places."""
    parts: list[str] = []
    done = 0
    for d in sorted(new):
        i = _at(paths, d)
        parts += (paths[done:i], d)
        done = i
    parts.append(paths[done:])
    return "".join(parts)

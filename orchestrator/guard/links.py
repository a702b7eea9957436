"""Hard links the workspace does not account for: a regular file whose link
count is more than the names the workspace holds for it has a name outside
(a link made into the workspace to an outside file). The file tools refuse
such a file (`orchestrator.tools.jail`, rule `path-hardlink-outside`) and
the sandbox hides it (`orchestrator.sandbox.masks`); both count names with
these pure functions, each from its own walk of the tree.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import TypeVar

__all__ = ["census", "held_inside", "unaccounted"]

K = TypeVar("K")


def census(names: Iterable[K], only: Collection[K] | None = None) -> dict[K, int]:
    """How many names the tree holds for each file: `names` has one inode key
    per name of a regular file in it (a key twice: two hard links inside);
    with `only`, just those keys are counted."""
    counts: dict[K, int] = {}
    for key in names:
        if only is None or key in only:
            counts[key] = counts.get(key, 0) + 1
    return counts


def held_inside(counts: Mapping[K, int], key: K, nlink: int) -> bool:
    """Whether the tree holds every one of the `nlink` names of file `key`."""
    return nlink <= 1 or counts.get(key, 0) >= nlink


def unaccounted(links: Mapping[K, int], counts: Mapping[K, int]) -> set[K]:
    """Of the files `links` gives the link count of, those with a name the
    tree (its `census`) does not hold."""
    return {key for key, nlink in links.items() if not held_inside(counts, key, nlink)}

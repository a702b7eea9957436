"""What every projection is built from: frozen models for callers, and the
working copies a fold updates in place before it freezes them once.

A fold starts from frozen state (empty, a snapshot, or an earlier result).
Its items stay the same objects until an event updates one, which then
becomes a dict of its fields; only those are frozen again. So folding many
events costs no copy per event, and one event (live state) costs about what
it touches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from events.envelope import construct_trusted


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)


Fields = Mapping[str, Any]  # an event's payload or envelope: JSON data or a model's __dict__
Handler = Callable[[Any, Fields, Fields], None]  # (a fold, the payload, the envelope)
M = TypeVar("M", bound=Frozen)
_NEAR = 8  # items Items.newest looks at before it builds an index


class Items(Generic[M]):
    """A tuple of frozen items being folded: appended to, and updated by key.
    Events update the newest item of a key (a call id, a turn number), so an
    index, built when first needed, maps each key to its newest item."""

    __slots__ = ("_model", "_items", "_key", "_at", "_touched")

    def __init__(self, model: type[M], start: tuple[M, ...], key: str) -> None:
        self._model = model
        self._items: list[M | dict[str, Any]] = list(start)
        self._key = key
        self._at: dict[Any, int] | None = None
        self._touched: list[int] = []  # where dicts may be: appended or updated items

    def append(self, values: dict[str, Any]) -> None:
        """A new item, all of its fields given."""
        i = len(self._items)
        self._items.append(values)
        self._touched.append(i)
        if self._at is not None:
            self._at[values[self._key]] = i

    def newest(self, key: Any) -> dict[str, Any] | None:
        """The fields of the newest item of `key`, to update in place. It is
        nearly always one of the last few, so a fold of a few events (live
        state) looks there first and builds no index."""
        at = self._at
        if at is None:
            items, k = self._items, self._key
            if items:  # the newest item of all: the common case, checked first
                x = items[-1]
                if type(x) is dict:
                    if x[k] == key:
                        return x
                elif x.__dict__[k] == key:
                    return self._mutable(len(items) - 1)
            for j in range(len(items) - 2, max(len(items) - _NEAR, 0) - 1, -1):
                x = items[j]
                if (x if type(x) is dict else x.__dict__)[k] == key:
                    return self._mutable(j)
            at = self._at = {fields(x)[k]: j for j, x in enumerate(items)}
        i = at.get(key)
        if i is None:
            return None
        item = self._items[i]
        return item if type(item) is dict else self._mutable(i)

    def last(self, match: Callable[[Fields], bool]) -> dict[str, Any] | None:
        """The fields of the last item that matches, to update in place."""
        items = self._items
        for i in range(len(items) - 1, -1, -1):
            if match(fields(items[i])):
                return self._mutable(i)
        return None

    def _mutable(self, i: int) -> dict[str, Any]:
        item = self._items[i]
        if type(item) is dict:
            return item
        values = self._items[i] = dict(item.__dict__)
        self._touched.append(i)
        return values

    def freeze(
        self, window: int | None = None, keep: Callable[[M], bool] | None = None
    ) -> tuple[M, ...]:
        """The items as models. Frozen in place too, so the fold can go on after
        its result was taken without changing that result.

        With a `window` (a live state, `events.projections.window`), only the
        last `window` items and those `keep` says are still live stay, here
        and in the fold that goes on."""
        items, model = self._items, self._model
        for i in self._touched:
            x = items[i]
            if type(x) is dict:
                items[i] = construct_trusted(model, x)
        self._touched.clear()
        if window is not None and len(items) > window:
            cut = len(items) - window
            old = [x for x in items[:cut] if keep is not None and keep(x)]  # type: ignore[arg-type]
            items[:cut] = old
            self._at = None  # positions moved: rebuilt when next needed
        return tuple(items)  # type: ignore[arg-type]


def fields(value: Any) -> Fields:
    """The fields of an item or of a nested payload value: a dict as it is (a
    working copy, or JSON data), or a model's."""
    return value if type(value) is dict else value.__dict__


def timestamp(at: datetime | str) -> datetime:
    return at if isinstance(at, datetime) else datetime.fromisoformat(at)

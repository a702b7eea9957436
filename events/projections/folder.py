"""All three projections of a session, folded together: `Folder` runs each
event through the handlers of every projection that reads its type.

This is the one definition of the projections. Live state (`apply`), replay
(`fold_records` over stored JSON), audits (a `Folder` per stream) and
snapshots (a `Projections` to start from) all go through the same handlers,
so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import MethodType
from typing import Any

from events.envelope import Event, construct_trusted
from events.projections import agent, ledger, quota, session
from events.projections.agent import AgentFold
from events.projections.frozen import Fields, Frozen, Handler
from events.projections.ledger import LedgerFold, PermissionLedger
from events.projections.quota import QuotaFold, QuotaUsage
from events.projections.session import SessionFold, SessionState
from events.projections.window import Window
from events.upcast import TODAY, current


class Projections(Frozen):
    """A session's projections: full (every call, turn, file and decision), or
    live (`live()`: bounded, what a worker and a snapshot hold; see
    `events.projections.window`). A fold goes on in the mode of its start."""

    session: SessionState = SessionState()
    quota: QuotaUsage = QuotaUsage()
    ledger: PermissionLedger = PermissionLedger()

    @property
    def last_seq(self) -> int:
        return self.session.last_seq

    @property
    def is_live(self) -> bool:
        return self.session.window is not None

    @staticmethod
    def live() -> Projections:
        """The empty live state: folds from it keep the live part only."""
        return _LIVE


# For each event type, the handlers that read it: (which part of a Folder, the
# handler), the parts in the order Folder.__init__ lists them.
_TABLES: tuple[dict[str, Handler], ...] = (session.ON, agent.ON, quota.ON, ledger.ON)
_HANDLERS = {
    t: tuple((i, table[t]) for i, table in enumerate(_TABLES) if t in table)
    for t in {t for table in _TABLES for t in table}
}


def _ignore(pl: Fields, e: Fields) -> None:
    """A type no projection reads: it moves `last_seq` only."""


class Folder:
    """A fold in progress: `add` events in order, `result()` whenever needed.
    Pure: no I/O, and the result depends on the events only. Events come as
    mappings, so both an `Event` (its and its payload's `__dict__`) and the
    stored JSON fit; types no projection reads only move `last_seq`."""

    __slots__ = ("last_seq", "_session", "_agent", "_quota", "_ledger", "_on")

    def __init__(self, start: Projections | None = None) -> None:
        st = start if start is not None else Projections()
        self.last_seq = st.session.last_seq
        self._session = SessionFold(st.session)
        live = st.session.window is not None
        self._agent = AgentFold(st.session.agent, live)
        self._quota = QuotaFold(st.quota)
        self._ledger = LedgerFold(st.ledger, live)
        self._on: dict[str, Callable[[Fields, Fields], None]] = {}

    def add(self, type_: str, pl: Fields, e: Fields) -> None:
        """One event: its type, its payload's field values, and its envelope's
        (`stream_id`, `seq`, `actor`, `occurred_at`: a datetime or its text)."""
        handle = self._on.get(type_)
        if handle is None:
            handle = self._on[type_] = self._bind(type_)
        handle(pl, e)
        self.last_seq = e["seq"]

    def add_records(self, records: Iterable[dict[str, Any]], *, stored: bool = False) -> None:
        """`add` for envelopes as plain JSON data at today's schema version
        (what `events.upcast.current` returns). `stored`: the records are
        decoded bodies as stored, each brought to today's version here
        (`current`'s check inline, its call only for a record that fails it:
        a Python call per event was 8% of a 10,000-event rebuild). If a
        record raises, `last_seq` is that of the one before it."""
        on, bind, seq = self._on, self._bind, self.last_seq
        today = TODAY if stored else None
        try:
            for r in records:  # `add`, inlined: replay speed is a product feature
                type_, pl = r["type"], r["payload"]
                if today is not None:
                    t = today.get(type_)
                    if (
                        t is None
                        or t[0] != r["schema_version"]
                        or type(pl) is not dict
                        or pl.keys() != t[1]
                    ):
                        r = current(r)
                        type_, pl = r["type"], r["payload"]
                handle = on.get(type_)
                if handle is None:
                    handle = on[type_] = bind(type_)
                handle(pl, r)
                seq = r["seq"]
        finally:
            self.last_seq = seq

    def _bind(self, type_: str) -> Callable[[Fields, Fields], None]:
        """One callable per type running its handlers, bound to this fold's
        parts: made once per type seen (a fold of one event, live state, binds
        one type). Most types have one handler, which is then called directly,
        with no loop per event."""
        parts = (self._session, self._agent, self._quota, self._ledger)
        bound = [MethodType(h, parts[i]) for i, h in _HANDLERS.get(type_, ())]
        if not bound:
            return _ignore
        if len(bound) == 1:
            return bound[0]
        if len(bound) == 2:
            first, second = bound

            def both(pl: Fields, e: Fields) -> None:
                first(pl, e)
                second(pl, e)

            return both

        def each(pl: Fields, e: Fields) -> None:
            for handle in bound:
                handle(pl, e)

        return each

    def result(self) -> Projections:
        values = {
            "session": self._session.result(self.last_seq, self._agent.result()),
            "quota": self._quota.result(),
            "ledger": self._ledger.result(),
        }
        state: Projections = construct_trusted(Projections, values)
        return state


def fold(events: Iterable[Event], state: Projections | None = None) -> Projections:
    """All three projections of `events`, after `state` (a snapshot) if given."""
    f = Folder(state)
    add = f.add
    for e in events:
        add(e.type, e.payload.__dict__, e.__dict__)
    return f.result()


def fold_records(
    records: Iterable[dict[str, Any]], state: Projections | None = None, *, stored: bool = False
) -> Projections:
    """`fold` over envelopes as plain JSON data (`Folder.add_records`): no
    `Event` is built."""
    f = Folder(state)
    f.add_records(records, stored=stored)
    return f.result()


def apply(state: Projections, e: Event) -> Projections:
    """`state` after one more event (live state, event by event)."""
    return fold((e,), state)


_NO_QUOTA, _NO_LEDGER = QuotaUsage(), PermissionLedger()
_LIVE = Projections(session=SessionState(window=Window()))


def apply_session(s: SessionState, e: Event) -> SessionState:
    """The session part of `apply`."""
    start: Projections = construct_trusted(
        Projections, {"session": s, "quota": _NO_QUOTA, "ledger": _NO_LEDGER}
    )
    return apply(start, e).session

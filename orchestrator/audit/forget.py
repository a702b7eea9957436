"""`audit forget`: erase a session's (or a whole job's) sealed payloads by
destroying their data keys, and record who did it and why.

The record comes first (PayloadsForgotten on each stream, naming the keys),
then the keys go: if destroying fails, running the command again finishes
it. Nothing in the events table changes, so every chain and signed digest
still verifies, and replay folds the plaintext metadata as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from events.envelope import NewEvent
from events.keyring import SqlKeyRing
from events.payloads import PayloadsForgotten
from events.sealing import Sealer
from events.store import EventStore
from orchestrator.errors import NotFound, UserError


@dataclass(frozen=True)
class Forgot:
    stream_id: str
    key_ids: tuple[str, ...]  # destroyed now; empty: nothing was left to destroy
    already: str = ""  # "forgotten on ... by ...: ..." when an earlier forget did it


def streams_of(store: EventStore, stream_id: str) -> list[str]:
    """The stream, and for a job's stream each of its sessions too."""
    rows = store.raw_stream(stream_id, 0)
    if not rows:
        raise NotFound(
            f"no events for {stream_id}; list jobs with `orchestrator jobs` and a "
            "job's sessions with `orchestrator status JOB_ID`"
        )
    first = store.loads(rows[0][1])
    if first["type"] != "JobSubmitted":
        return [stream_id]
    return [stream_id, *(s["session_id"] for s in first["payload"]["sessions"])]


def sealer_of(store: EventStore) -> Sealer | None:
    """The filter that seals this store's payloads, if it has one."""
    return next((f for f in getattr(store, "filters", ()) if isinstance(f, Sealer)), None)


def forget(store: EventStore, sealer: Sealer, stream_id: str, by: str, reason: str) -> list[Forgot]:
    """Destroy the data keys of `stream_id` (a session, or a job and its
    sessions) after recording PayloadsForgotten on each stream that had one."""
    keys = sealer.keys
    if not isinstance(keys, SqlKeyRing):
        raise TypeError("forget needs the store's own key ring")
    if not reason.strip():
        raise UserError("say why (--reason): the record of a forget is what an auditor reads")
    done = []
    for sid in streams_of(store, stream_id):
        rows = keys.rows(sid)
        live = tuple(r.key_id for r in rows if r.live)
        if not live:
            gone = next((r.forgotten for r in rows if r.forgotten is not None), None)
            done.append(Forgot(sid, (), gone.text() if gone else ""))
            continue
        event = NewEvent.create(
            PayloadsForgotten(by=by, reason=reason, key_ids=live),
            actor=by,
            correlation_id=_correlation(store, sid),
        )
        store.append(sid, [event], None)
        destroyed = keys.forget(sid, by, reason)
        sealer.forget_cached(destroyed)
        done.append(Forgot(sid, tuple(destroyed)))
    return done


def _correlation(store: EventStore, stream_id: str) -> str:
    rows = store.raw_stream(stream_id, 0)
    return str(store.loads(rows[0][1])["correlation_id"]) if rows else stream_id

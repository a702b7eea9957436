"""The store's filter seam: every appended event passes the filters, in order,
before it is sealed, so the chain hashes what the filters made."""

from __future__ import annotations

from events import payloads as p
from events.envelope import NewEvent
from events.store import SqlEventStore
from events.verify import verify_rows
from tests.factories import new


def _suffix(tag: str):
    def f(stream_id: str, e: NewEvent) -> NewEvent:
        if not isinstance(e.payload, p.SessionFailed):
            return e
        payload = e.payload.model_copy(update={"message": e.payload.message + tag})
        return e.model_copy(update={"payload": payload})

    return f


def test_filters_run_in_order_before_the_event_is_hashed(store: SqlEventStore, stream_id: str):
    store = SqlEventStore(store.url, filters=(_suffix("-a"), _suffix("-b")))
    stored = store.append(
        stream_id,
        [new(p.SessionFailed(error="x", message="m")), new(p.SessionCompleted(files_changed=1))],
        0,
    )
    assert stored[0].payload.message == "m-a-b"  # type: ignore[union-attr]
    read = list(store.read_stream(stream_id))
    assert read == stored
    assert verify_rows(store.rows(stream_id)).ok
    store.close()

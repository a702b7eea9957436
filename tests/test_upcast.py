"""Old event versions are upcast on read; an unknown type or version is a clear
error, never a silent skip (DESIGN.md, 'The event envelope')."""

from __future__ import annotations

import pytest

from events.errors import UnknownEvent
from events.payloads import SCHEMA_VERSIONS
from events.upcast import current, upcast


def record(type_: str, version: int, payload: dict) -> dict:
    return {
        "stream_id": "s-1",
        "seq": 7,
        "type": type_,
        "schema_version": version,
        "payload": payload,
    }


def test_a_v1_tool_call_started_is_upcast_to_today_without_a_trace() -> None:
    old = record("ToolCallStarted", 1, {"type": "ToolCallStarted", "call_id": "c1"})
    new = upcast(old)
    assert new["schema_version"] == SCHEMA_VERSIONS["ToolCallStarted"] == 2
    assert new["payload"] == {"type": "ToolCallStarted", "call_id": "c1", "trace_id": None}
    assert old["schema_version"] == 1 and "trace_id" not in old["payload"]  # not mutated


def test_current_validates_an_old_payload_into_todays_fields() -> None:
    old = record(
        "ModelRequested",
        1,
        {
            "type": "ModelRequested",
            "model_turn": 1,
            "provider": "scripted",
            "model": "m",
            "messages": 2,
            "prompt_digest": "ab" * 32,
        },
    )
    now = current(old)
    assert now["schema_version"] == 2
    assert now["payload"]["trace_id"] is None and now["payload"]["messages"] == 2


def test_todays_payload_with_exactly_its_fields_is_taken_as_stored() -> None:
    today = record(
        "ToolCallStarted",
        2,
        {"type": "ToolCallStarted", "call_id": "c1", "planned_count": 0, "trace_id": None},
    )
    assert current(today) is today


@pytest.mark.parametrize(
    "type_,version", [("NoSuchEvent", 1), ("ToolCallStarted", 3), ("ToolCallStarted", 0)]
)
def test_an_unknown_type_or_version_is_an_error_naming_the_event(type_: str, version: int) -> None:
    with pytest.raises(UnknownEvent) as err:
        upcast(record(type_, version, {}))
    assert "s-1" in str(err.value) and type_ in str(err.value)

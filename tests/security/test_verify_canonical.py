"""`audit verify` accepts only bodies that are exactly the canonical encoding
of their own content. An attacker who can write the store but has no signing
key could otherwise re-hash the whole chain around a body with a duplicate
key (one reader sees the first value, another the last), reordered keys or
other whitespace, and the chain would still hold."""

from __future__ import annotations

import hashlib
import io

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from events.envelope import canonical_json, genesis_hash
from events.verify import Row, export_lines, verify_jsonl, verify_rows
from tests.factories import place, session_payloads


def _bodies() -> tuple[str, list[bytes]]:
    events = place("stream-x", session_payloads(3))
    out = []
    for e in events:
        record = e.model_dump(mode="json")
        del record["position"], record["hash"]
        out.append(canonical_json(record))
    return "stream-x", out


def _rehashed(stream: str, bodies: list[bytes]) -> list[Row]:
    """The chain recomputed over `bodies`, as an attacker without the key would
    (each body's prev_hash rewritten to the new link)."""
    rows, prev = [], genesis_hash(stream)
    for seq, body in enumerate(bodies, start=1):
        data = orjson.loads(body)
        data["prev_hash"] = prev
        text = canonical_json(data)
        if body != canonical_json(orjson.loads(body)):  # keep the forged spelling
            text = body.replace(orjson.loads(body)["prev_hash"].encode(), prev.encode())
        digest = hashlib.sha256(prev.encode())
        digest.update(text)
        rows.append(Row(seq, stream, seq, prev, digest.hexdigest(), text))
        prev = digest.hexdigest()
    return rows


def _duplicate_key(body: bytes) -> bytes:
    return b'{"type":"Forged",' + body[1:]


def _reordered(body: bytes) -> bytes:
    data = orjson.loads(body)
    return orjson.dumps(dict(reversed(list(data.items()))))


def _spaced(body: bytes) -> bytes:
    return orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)


MUTATIONS = {"duplicate-key": _duplicate_key, "reordered": _reordered, "whitespace": _spaced}


def test_an_untouched_chain_still_verifies() -> None:
    stream, bodies = _bodies()
    assert verify_rows(_rehashed(stream, bodies)).ok


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_rehashed_chain_around_a_non_canonical_body_is_refused(data: st.DataObject) -> None:
    stream, bodies = _bodies()
    at = data.draw(st.integers(0, len(bodies) - 1))
    how = data.draw(st.sampled_from(sorted(MUTATIONS)))
    bodies[at] = MUTATIONS[how](bodies[at])
    report = verify_rows(_rehashed(stream, bodies))
    found = [(p.kind, p.stream_id, p.seq) for p in report.problems]
    assert ("not_canonical", stream, at + 1) in found, (how, found)
    assert "stream stream-x seq" in str(report.problems[0])


def test_an_exported_line_that_is_not_canonical_is_refused() -> None:
    stream, bodies = _bodies()
    rows = [(r.position, r.body, r.hash) for r in _rehashed(stream, bodies)]
    lines = b"".join(export_lines(rows)).splitlines(keepends=True)
    assert verify_jsonl(io.BytesIO(b"".join(lines))).ok
    lines[1] = b'{"seq":999,' + lines[1][1:]  # a duplicate key: readers disagree on seq
    report = verify_jsonl(io.BytesIO(b"".join(lines)))
    assert any(p.kind == "not_canonical" for p in report.problems), report.problems

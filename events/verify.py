"""Verifying hash chains, sequences and stream boundaries.

Works on the store's rows (checking the stored bytes) and on exported JSONL
(re-encoding each record canonically, which reproduces the hashed bytes). It
collects every problem instead of stopping at the first, like Temporal's
replayer, and says exactly where each one is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from events.envelope import canonical_json, genesis_hash
from events.errors import UnknownEvent
from events.payloads import SCHEMA_VERSIONS
from events.upcast import upcast

MANIFEST_KEY = "manifest"


@dataclass(frozen=True)
class Problem:
    kind: str  # hash_mismatch | broken_link | seq_gap | seq_repeat | stream_mismatch
    # | unknown_event | undecodable | truncated | manifest_mismatch | not_canonical
    stream_id: str
    seq: int | None
    position: int | None
    detail: str

    def __str__(self) -> str:
        where = f"stream {self.stream_id}"
        if self.seq is not None:
            where += f" seq {self.seq}"
        if self.position is not None:
            where += f" (position {self.position})"
        return f"{where}: {self.kind}: {self.detail}"


@dataclass
class VerifyReport:
    events: int = 0
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)  # stream -> (seq, hash)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def streams(self) -> int:
        return len(self.heads)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "streams": self.streams,
            "problems": [p.__dict__ for p in self.problems],
        }


class Row(NamedTuple):
    """One stored event as verify sees it: the columns and the hashed bytes (a
    tuple: made for every row of a store, at a third of a dataclass's cost)."""

    position: int | None
    stream_id: str
    seq: int
    prev_hash: str
    hash: str
    body: bytes


class Verifier:
    """Feed rows in position order; read `report` at the end. `positions`:
    keep a digest of the positions read, which only an export's manifest is
    checked against (`check_manifest`); a store's audit has no use for it."""

    def __init__(self, *, positions: bool = True) -> None:
        self.report = VerifyReport()
        self._positions = hashlib.sha256() if positions else None

    def add(self, row: Row) -> dict[str, Any] | None:
        """Check one row. Returns its body as JSON data when the row is sound (so
        a caller can fold it without parsing it again), None when it is not (its
        problem is then in `report`)."""
        r = self.report
        r.events += 1
        if self._positions is not None:
            self._positions.update(
                b"%d\n" % row.position if row.position is not None else b"None\n"
            )
        problem, body = self._check(row)
        if problem is not None:
            r.problems.append(problem)
        r.heads[row.stream_id] = (row.seq, row.hash)
        return body if problem is None else None

    def add_many(self, rows: Sequence[tuple[Any, ...]]) -> dict[str, list[dict[str, Any]]]:
        """`add` for a batch of plain rows (`Row`'s fields in order, as
        `events.reader` reads them): the bodies of the sound ones, by stream,
        each stream's in row order (what a fold of each stream takes).

        The same checks as `add`, inlined for the common case of a sound row
        at today's schema version; any row that fails one goes through `add`'s
        own checks, so every problem is found and worded in one place."""
        r, versions, genesis = self.report, SCHEMA_VERSIONS, genesis_hash
        heads, problems = r.heads, r.problems
        sha, loads, dumps, sort = hashlib.sha256, orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS
        if self._positions is not None:
            self._positions.update(
                b"".join([b"%d\n" % row[0] if row[0] is not None else b"None\n" for row in rows])
            )
        r.events += len(rows)
        sound: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            position, sid, seq, prev, digest, body = row
            head = heads.get(sid)
            data: Any = None
            fits = False
            if sha(prev.encode() + body).hexdigest() == digest:
                # Not contextlib.suppress (a call per row), nor `type(data) is
                # dict` and data.get (a call per key): a body that is not a dict
                # or lacks a key raises here and takes `_check` below.
                try:
                    data = loads(body)
                    fits = (
                        data["seq"] == seq
                        and data["stream_id"] == sid
                        and data["prev_hash"] == prev
                        and (
                            (head[0] + 1 == seq and head[1] == prev)
                            if head is not None
                            else (seq == 1 and prev == genesis(sid))
                        )
                        and versions.get(data["type"]) == data["schema_version"]
                        and dumps(data, option=sort) == body
                    )
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    pass
            if not fits:
                problem, data = self._check(Row(*row))
                if problem is not None:
                    problems.append(problem)
            heads[sid] = (seq, digest)
            if data is not None:
                run = sound.get(sid)
                if run is None:
                    run = sound[sid] = []
                run.append(data)
        return sound

    def _check(self, row: Row) -> tuple[Problem | None, Any]:
        digest = hashlib.sha256(row.prev_hash.encode())
        digest.update(row.body)
        if digest.hexdigest() != row.hash:
            return self._bad(
                row,
                "hash_mismatch",
                "the stored hash does not match the "
                "event's bytes: the event was altered after it was written",
            )
        try:
            body = orjson.loads(row.body)
        except orjson.JSONDecodeError as exc:
            return self._bad(row, "undecodable", f"event body is not JSON: {exc}")
        if type(body) is dict and canonical_json(body) != row.body:
            # Bodies are written canonically (sorted keys, no whitespace), so
            # any other spelling of the same content was made elsewhere: a
            # duplicate key shows one value to a reader and hides another.
            return self._bad(
                row,
                "not_canonical",
                "the event's bytes are not the canonical encoding of its own content "
                "(a duplicate or reordered key, or other whitespace): it was not written "
                "by the store, even if its hash chain holds",
            )
        if (
            type(body) is not dict
            or body.get("stream_id") != row.stream_id
            or body.get("seq") != row.seq
            or body.get("prev_hash") != row.prev_hash
        ):
            written = body if type(body) is dict else {}
            return self._bad(
                row,
                "stream_mismatch",
                f"the event was written as stream "
                f"{written.get('stream_id')} seq {written.get('seq')}: "
                "it was moved or spliced",
            )
        head = self.report.heads.get(row.stream_id)
        last_seq, last_hash = head if head is not None else (0, genesis_hash(row.stream_id))
        if row.seq != last_seq + 1:
            kind = "seq_gap" if row.seq > last_seq + 1 else "seq_repeat"
            return self._bad(
                row,
                kind,
                f"expected seq {last_seq + 1} after {last_seq}, found "
                f"{row.seq}: events are missing, duplicated or out of order",
            )
        if row.prev_hash != last_hash:
            return self._bad(
                row,
                "broken_link",
                "prev_hash does not match the hash of the "
                "event before it: an event before this one was removed, "
                "replaced or reordered",
            )
        try:
            if SCHEMA_VERSIONS.get(body.get("type", "")) != body.get("schema_version"):
                upcast(body)
        except (UnknownEvent, KeyError, TypeError) as exc:
            return self._bad(row, "unknown_event", str(exc))
        return None, body

    @staticmethod
    def _bad(row: Row, kind: str, detail: str) -> tuple[Problem, None]:
        return Problem(kind, row.stream_id, row.seq, row.position, detail), None

    def check_manifest(self, manifest: dict[str, Any]) -> None:
        """Compare the heads an export promised with what was read (catches truncation)."""
        if self._positions is None:
            raise ValueError("this Verifier was made without positions: it cannot check a manifest")
        promised = manifest.get("heads", {})
        for stream_id, (seq, hash_) in promised.items():
            head = self.report.heads.get(stream_id)
            if head is None or head[0] != seq or head[1] != hash_:
                found = f"seq {head[0]}" if head else "nothing"
                self.report.problems.append(
                    Problem(
                        "truncated",
                        stream_id,
                        seq,
                        None,
                        f"the export's manifest says the stream ends at seq {seq}, found {found}: "
                        "events were removed from the end",
                    )
                )
        for stream_id in self.report.heads.keys() - promised.keys():
            self.report.problems.append(
                Problem(
                    "manifest_mismatch",
                    stream_id,
                    None,
                    None,
                    "stream is not listed in the export's manifest: it was added afterwards",
                )
            )
        if manifest.get("positions_sha256") != self._positions.hexdigest():
            self.report.problems.append(
                Problem(
                    "manifest_mismatch",
                    "*",
                    None,
                    None,
                    "the global positions or the order of lines differ from the export's manifest: "
                    "lines were reordered or positions edited",
                )
            )
        if manifest.get("events") != self.report.events:
            self.report.problems.append(
                Problem(
                    "manifest_mismatch",
                    "*",
                    None,
                    None,
                    f"manifest counts {manifest.get('events')} events, the file has "
                    f"{self.report.events}",
                )
            )


def verify_rows(rows: Iterable[Row]) -> VerifyReport:
    v = Verifier()
    for row in rows:
        v.add(row)
    return v.report


def record_row(record: dict[str, Any]) -> Row:
    """An exported record back to the row it came from (canonical re-encoding)."""
    envelope = {k: v for k, v in record.items() if k not in ("position", "hash")}
    return Row(
        record.get("position"),
        str(record["stream_id"]),
        int(record["seq"]),
        str(record["prev_hash"]),
        str(record["hash"]),
        canonical_json(envelope),
    )


def verify_jsonl(lines: Iterable[bytes | str]) -> VerifyReport:
    """Verify an export; a missing manifest line is reported as possible truncation."""
    v, manifest = Verifier(), None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            raw = line.encode() if isinstance(line, str) else line
            body = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
            canonical = raw in (body + b"\n", body + b"\r\n", body)  # the last may lack one
            if MANIFEST_KEY in record:
                manifest = record[MANIFEST_KEY]
                if not canonical:  # the manifest line is written canonically too
                    v.report.problems.append(
                        Problem(
                            "not_canonical",
                            "*",
                            None,
                            None,
                            f"line {lineno} (the manifest) is not the canonical encoding "
                            "of its own content: export writes each line canonically",
                        )
                    )
                continue
            if not canonical:
                v.report.problems.append(
                    Problem(
                        "not_canonical",
                        str(record.get("stream_id", "?")),
                        record.get("seq"),
                        record.get("position"),
                        f"line {lineno} is not the canonical encoding of its own content "
                        "(a duplicate or reordered key, or other whitespace): export writes "
                        "each line canonically",
                    )
                )
            if manifest is not None:
                v.report.problems.append(
                    Problem(
                        "manifest_mismatch",
                        "*",
                        None,
                        None,
                        f"line {lineno} follows the manifest, which must be the last line",
                    )
                )
            v.add(record_row(record))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            v.report.problems.append(
                Problem(
                    "undecodable", "?", None, None, f"line {lineno} is not an exported event: {exc}"
                )
            )
    if manifest is None:
        v.report.problems.append(
            Problem(
                "truncated",
                "*",
                None,
                None,
                "no manifest line at the end: the export is incomplete",
            )
        )
    else:
        v.check_manifest(manifest)
    return v.report


def export_lines(
    records: Iterable[tuple[int, bytes, str]],
    loads: Callable[[bytes], dict[str, Any]] = orjson.loads,
) -> Iterator[bytes]:
    """JSONL lines for stored (position, body, hash) rows, then the manifest line.
    `loads` may open sealed fields (a decrypted export: for reading, its
    hashes are of the sealed bodies, so only the plain export verifies)."""
    heads: dict[str, tuple[int, str]] = {}
    positions = hashlib.sha256()
    count = 0
    for position, body, hash_ in records:
        record = loads(body)
        record["position"], record["hash"] = position, hash_
        heads[record["stream_id"]] = (record["seq"], hash_)
        positions.update(f"{position}\n".encode())
        count += 1
        yield orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n"
    manifest = {"events": count, "heads": heads, "positions_sha256": positions.hexdigest()}
    yield orjson.dumps({MANIFEST_KEY: manifest}, option=orjson.OPT_SORT_KEYS) + b"\n"

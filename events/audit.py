"""Whole-store audits: every hash chain verified and, for `audit`, every
stream folded into its projections, from one read of each row.

Rows come from `events.reader` as plain tuples in large batches; the verifier
checks them without building a model (`Verifier.add_many`), and the fold runs
with the cyclic garbage collector paused. A large store with many streams is
split into ranges of streams read by separate processes (one per core, the
caller's own among them); each range keeps position order, so every stream is
checked exactly as a single pass would check it, and the reports merge into
the one a single pass gives.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter, ValidationError

from events import reader
from events.db import create_engine
from events.errors import UnknownEvent
from events.projections import Folder, Projections
from events.store import EventStore, SqlEventStore
from events.verify import Problem, Row, Verifier, VerifyReport, verify_rows

# A store holding fewer events is audited in one process: below this, a second
# process and its share of the merge cost about what they save.
PARALLEL_MIN = 50_000
# How many times the events of another process's range this one's range holds,
# in an audit with projections: the others also write theirs out as JSON (a
# tenth of their CPU: 0.19 s of 1.7 s per 100,000 events here), so with equal
# ranges this process waited for them.
LEAD = 1.1


@dataclass
class Audit:
    """Every chain verified, and the projections of every stream that verified.
    A stream with a problem has no projections: its state cannot be trusted."""

    report: VerifyReport
    projections: Mapping[str, Projections] = field(default_factory=dict)


_JSON: TypeAdapter[Projections] = TypeAdapter(Projections)


class Folded(Mapping[str, Projections]):
    """Every stream's projections: folded in this process, or folded by another
    and handed over as pydantic's JSON of them (a few times cheaper than the
    pickled models) in a file it wrote (`Spilled`), decoded when first read.
    Equal to a dict of the same projections."""

    def __init__(self, live: dict[str, Projections], sent: dict[str, memoryview | bytes]) -> None:
        self._live = live
        self._sent = sent

    def __getitem__(self, sid: str) -> Projections:
        hit = self._live.get(sid)
        if hit is None:
            hit = self._live[sid] = Projections.model_validate_json(bytes(self._sent.pop(sid)))
        return hit

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with the JSON still undecoded (a mapped file's view cannot be)."""
        return Folded, (self._live, {sid: bytes(view) for sid, view in self._sent.items()})

    def __contains__(self, sid: object) -> bool:
        return sid in self._live or sid in self._sent

    def __iter__(self) -> Iterator[str]:
        return iter([*self._live, *self._sent])

    def __len__(self) -> int:
        return len(self._live) + len(self._sent)


_pause_lock = threading.Lock()
_pauses = 0  # contexts inside collector_paused, over all threads
_was_enabled = True  # the collector's state when the first of them entered


@contextlib.contextmanager
def collector_paused(promote: bool = False) -> Iterator[None]:
    """The cyclic garbage collector off for a fold of many events: folding
    creates no cyclic garbage, but the growing heap of projections makes every
    automatic collection walk more of it (whole-store audits ran 1.2-1.6x
    faster with it off, a 10,000-event replay 10%). Counted over threads: the
    last to leave puts the collector back as the first found it, so two
    overlapping pauses (two API requests) cannot leave it off for good.

    `promote`, for a fold that keeps what it built (a whole-store audit): the
    collector counts every object the fold allocated as young, so the next
    allocation after the pause would walk the whole result once (16% of a
    1M-event audit's CPU). Freezing then unfreezing moves them straight into
    the oldest generation, as if they had survived that walk; skipped when
    the process keeps objects frozen itself (`gc.freeze` before a fork),
    whose permanent generation must stay as it is."""
    global _pauses, _was_enabled
    with _pause_lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            if promote and gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()


def audit_batches(batches: Iterable[Sequence[tuple[Any, ...]]], fold: bool = True) -> Audit:
    """Verify (and with `fold`, fold) batches of rows in position order, parsing
    each body once.

    Equal to `verify_rows` over the same rows plus `replay` of each stream that
    verifies (a body that verifies but does not fit its model is one more
    problem, "undecodable", which `verify_rows` does not look for)."""
    v = Verifier(positions=False)
    problems = v.report.problems
    folders: dict[str, Folder] = {}
    broken: set[str] = set()
    undecodable: list[Problem] = []
    for rows in batches:
        seen = len(problems)
        sound = v.add_many(rows)
        if fold:
            for p in problems[seen:]:
                broken.add(p.stream_id)
                folders.pop(p.stream_id, None)
            for sid, run in sound.items():  # each stream's in one call
                if sid in broken:
                    continue
                f = folders.get(sid)
                if f is None:
                    f = folders[sid] = Folder()
                try:
                    f.add_records(run, stored=True)
                except (UnknownEvent, ValidationError, KeyError, TypeError, ValueError) as exc:
                    seq = next(body["seq"] for body in run if body["seq"] > f.last_seq)
                    position = next(r[0] for r in rows if r[1] == sid and r[2] == seq)
                    undecodable.append(
                        Problem(
                            "undecodable",
                            sid,
                            seq,
                            position,
                            f"the event does not fit its type's model: {exc}".splitlines()[0],
                        )
                    )
                    broken.add(sid)
                    del folders[sid]
        # Freed now, while still in cache, not once the next batch is parsed.
        del sound
    if undecodable:
        problems += undecodable
        _in_order(problems)
    return Audit(v.report, {sid: f.result() for sid, f in folders.items()})


def _in_order(problems: list[Problem]) -> None:
    """Problems in the order of their rows (one problem per row at most)."""
    if all(p.position is not None for p in problems):
        problems.sort(key=lambda p: p.position or 0)


def audit_rows(rows: Iterable[Row]) -> Audit:
    """`audit_batches` over `Row`s."""
    return audit_batches([list(rows)])


Spilled = tuple[str, dict[str, tuple[int, int]]]
"""A file of projections' JSON, one after another, and where each stream's
lies in it (offset, length)."""


def _part(
    url: str, part: reader.Part, fold: bool, spill: str | None
) -> tuple[VerifyReport, Spilled | dict[str, bytes]]:
    """One range of streams, in a process of its own: its report, and the
    JSON of each stream's projections in a file in folder `spill`. Sent
    through the pool's pipe they took 0.65 s for 170 MB here, and the
    caller's CPU to take them in, both on the critical path; from a file the
    caller maps them and decodes a stream's only when it is read. Without
    a folder, or when the file cannot be written (a full disk), they go
    through the pipe after all: the audit is slower, not lost."""
    engine = create_engine(url)
    try:
        with collector_paused(promote=fold):
            a = audit_batches(reader.row_batches(engine, url, part=part), fold)
    finally:
        engine.dispose()
    dump = _JSON.dump_json
    if a.projections and spill is not None:
        with contextlib.suppress(OSError):
            return a.report, _spill(a.projections, spill)
    return a.report, {sid: dump(p) for sid, p in a.projections.items()}


def _spill(projections: Mapping[str, Projections], folder: str) -> Spilled:
    """The projections' JSON written one after another into a new file in `folder`."""
    dump, where, at = _JSON.dump_json, {}, 0
    fd, path = tempfile.mkstemp(dir=folder, suffix=".json")
    with open(fd, "wb") as fh:
        for sid, p in projections.items():
            data = dump(p)
            fh.write(data)
            where[sid] = (at, len(data))
            at += len(data)
    return path, where


def _take(spilled: Spilled) -> dict[str, memoryview]:
    """Each stream's JSON in a file `_part` wrote, mapped (the mapping keeps
    its pages after the file is removed, until the last view is gone)."""
    path, where = spilled
    with open(path, "rb") as fh:
        view = memoryview(mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ))
    return {sid: view[at : at + n] for sid, (at, n) in where.items()}


def _merge(mine: Audit, others: list[tuple[VerifyReport, Spilled | dict[str, bytes]]]) -> Audit:
    """Audits of disjoint ranges of streams as one."""
    report = mine.report
    sent: dict[str, memoryview | bytes] = {}
    for other, projections in others:
        report.events += other.events
        report.heads.update(other.heads)
        report.problems += other.problems
        sent.update(_take(projections) if isinstance(projections, tuple) else projections)
    _in_order(report.problems)
    return Audit(report, Folded(dict(mine.projections), sent))


def cores() -> int:
    """The cores this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def whole_store(
    engine: sa.Engine,
    url: str,
    *,
    fold: bool = True,
    processes: int | None = None,
    min_events: int = PARALLEL_MIN,
) -> Audit:
    """Every stream of the store at `url` verified (and folded): in ranges of
    streams over `processes` processes (default: one per core) when the store
    holds `min_events` or more and this process can fork, in this process
    otherwise."""
    n = cores() if processes is None else processes
    chunks: list[reader.Part] = [(None, None)]
    # Workers are forked (no interpreter start, no re-import of the caller's
    # main module), which is safe only while this process runs one thread.
    forkable = "fork" in get_all_start_methods() and threading.active_count() == 1
    if n > 1 and forkable and reader.last_position(engine, url) >= min_events:
        chunks = reader.parts(reader.stream_sizes(engine, url), n, LEAD if fold else 1.0)
    with collector_paused(promote=fold):
        if len(chunks) == 1:
            return audit_batches(reader.row_batches(engine, url), fold)
        with contextlib.ExitStack() as stack:
            # The others' projections come back in files of a folder removed
            # on the way out, whatever happened (none: through the pipe).
            spill = None
            with contextlib.suppress(OSError):
                if fold:
                    spill = stack.enter_context(tempfile.TemporaryDirectory(prefix="orch-audit-"))
            pool = stack.enter_context(
                ProcessPoolExecutor(len(chunks) - 1, mp_context=get_context("fork"))
            )
            others = [pool.submit(_part, url, c, fold, spill) for c in chunks[1:]]
            mine = audit_batches(reader.row_batches(engine, url, part=chunks[0]), fold)
            return _merge(mine, [f.result() for f in others])


def verify_store(store: EventStore, stream_id: str | None = None) -> VerifyReport:
    """`verify_rows(store.rows(stream_id))`, read and checked in batches: the
    whole store over every core when it is large (`whole_store`)."""
    if not isinstance(store, SqlEventStore):
        return verify_rows(store.rows(stream_id))
    if stream_id is None:
        return whole_store(store.engine, store.url, fold=False).report
    with collector_paused():
        batches = reader.row_batches(store.engine, store.url, stream_id)
        return audit_batches(batches, fold=False).report


def chain_heads(store: EventStore, stream_id: str | None = None) -> Iterator[tuple[str, int, str]]:
    """(stream id, seq, hash) of every stored row (of one stream) in position
    order, without reading bodies: what checking signed digests needs."""
    if not isinstance(store, SqlEventStore):
        for row in store.rows(stream_id):
            yield row.stream_id, row.seq, row.hash
        return
    cols = "stream_id, seq, hash"
    for batch in reader.row_batches(store.engine, store.url, stream_id, columns=cols):
        yield from batch  # type: ignore[misc]

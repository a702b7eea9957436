"""Cost against history: does an append or a rebuild get slower as the log grows?

Two flatness checks, each a ratio of the same operation on a large and a small
history in the same run, rounds interleaved (issue 18):

- append latency against store size: single-event appends (keyed, as the
  runner appends) to fresh streams of a SQLite store (WAL, synchronous=FULL)
  that already holds SMALL or LARGE events. Target: large / small <= 1.2x.
- rebuild against history length: `events.replay.replay` of a session whose
  snapshot was taken (`events.replay.load`) and which then grew a 100-event
  tail, for a SMALL- and a LARGE-event session. Target: large / small <= 1.2x.
  The snapshot's size is printed beside it: state that grows with history
  makes both the snapshot and its parse grow.

The peer of each figure is the same product at the small size: what is
measured is growth, so the ratio is the figure.
"""

from __future__ import annotations

import gc
import random
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    Options,
    Result,
    median,
    new_events,
    now,
    pct,
    rm_sqlite,
    scratch_dir,
    session_payloads,
    show,
    x,
)

DURABILITY = "SQLite WAL, synchronous=FULL (every commit fsynced)"
SESSION_LEN = 100  # events per prefilled session
# Rebuilds per size: a rebuild takes a few ms since snapshots are bounded, and
# on a shared 2-core machine 5 samples' median was one preempted sample away
# from either side (1.1x and 3.5x in two runs of the same code).
REBUILD_ROUNDS = 25


def _sid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _prefill(store: Any, rng: random.Random, n_events: int) -> None:
    """`n_events` of realistic sessions, appended a session per transaction."""
    for s in range(n_events // SESSION_LEN):
        sid = _sid(rng)
        news = new_events(session_payloads(rng, sid, SESSION_LEN), start=s * SESSION_LEN)
        store.append(sid, news, 0)


def _append_latencies(store: Any, rng: random.Random, n: int) -> list[float]:
    """Seconds per single-event keyed append, `n` appends over n/10 fresh streams."""
    from events.envelope import NewEvent

    jobs = []
    for _ in range(n // 10):
        sid = _sid(rng)
        for i, e in enumerate(new_events(session_payloads(rng, sid, 10))):
            keyed = NewEvent.model_construct(**{**dict(e), "idempotency_key": f"step:{i}"})
            jobs.append((sid, keyed, i))
    gc.collect()
    out = []
    for sid, e, seq in jobs:
        t = now()
        store.append(sid, [e], seq)
        out.append(now() - t)
    return out


def _long_session(store: Any, rng: random.Random, n_events: int) -> str:
    """A session of `n_events`, snapshotted at its end, then a 100-event tail."""
    from events.replay import load

    sid = _sid(rng)
    news = new_events(session_payloads(rng, sid, n_events + 100))
    for i in range(0, n_events, 500):
        store.append(sid, news[i : min(i + 500, n_events)], i)
    load(store, sid)  # writes the snapshot at n_events
    store.append(sid, news[n_events:], n_events)
    return sid


def _rebuild_seconds(store: Any, sid: str) -> float:
    from events.replay import replay

    gc.collect()
    t = now()
    replay(store, sid)
    return now() - t


def _snapshot_parts(store: Any, sid: str) -> tuple[float, float]:
    """Seconds to read the session's snapshot row, and to parse it: the part of
    a rebuild that grows with history while the snapshot holds all of it."""
    from events.projections import Projections

    gc.collect()
    t = now()
    snap = store.load_snapshot(sid)
    read = now() - t
    t = now()
    Projections.model_validate_json(snap[2])
    return read, now() - t


def run(opts: Options) -> Result:
    from events.store import open_store

    res = Result("growth")
    small, large = 1_000, (20_000 if opts.quick else 100_000)
    n_rounds = 3
    rng = random.Random(18)
    with scratch_dir("growth") as d:
        paths = {"small": d / "small.sqlite", "large": d / "large.sqlite"}
        stores = {}
        for name, size in (("small", small), ("large", large)):
            rm_sqlite(paths[name])
            stores[name] = open_store(f"sqlite:///{paths[name]}", upgrade=True)
            _prefill(stores[name], rng, size)
        lat: dict[str, list[float]] = {"small": [], "large": []}
        for _ in range(n_rounds):
            for name in ("small", "large"):
                lat[name] += _append_latencies(stores[name], rng, 200)
        sessions = {
            "small": _long_session(stores["small"], rng, small),
            "large": _long_session(stores["large"], rng, large),
        }
        rebuild: dict[str, list[float]] = {"small": [], "large": []}
        for _ in range(REBUILD_ROUNDS):
            for name in ("small", "large"):
                rebuild[name].append(_rebuild_seconds(stores[name], sessions[name]))
        parts = {name: _snapshot_parts(stores[name], sessions[name]) for name in stores}
        snap_bytes = {
            name: len((stores[name].load_snapshot(sessions[name]) or (0, 0, b""))[2])
            for name in ("small", "large")
        }
        for s in stores.values():
            s.close()
        for p in paths.values():
            rm_sqlite(Path(p))

    p50 = {k: pct(v, 50) for k, v in lat.items()}
    show(
        f"[growth] append latency against store size ({len(lat['small']):,} single-event "
        f"appends per size, {n_rounds} interleaved rounds); durability: {DURABILITY}",
        ("store holds", "p50 ms", "p95 ms", "large / small"),
        [
            (f"{small:,} events", p50["small"] * 1e3, pct(lat["small"], 95) * 1e3, ""),
            (
                f"{large:,} events",
                p50["large"] * 1e3,
                pct(lat["large"], 95) * 1e3,
                x(p50["large"] / p50["small"]),
            ),
        ],
    )
    med = {k: median(v) for k, v in rebuild.items()}
    spread = {k: f"{min(v) * 1e3:,.1f}..{max(v) * 1e3:,.1f}" for k, v in rebuild.items()}
    show(
        "[growth] rebuild from snapshot + 100-event tail against history length "
        f"(median of {REBUILD_ROUNDS}, interleaved)",
        (
            "session length",
            "rebuild ms",
            "min..max ms",
            "snapshot bytes",
            "of which: read ms",
            "parse ms",
            "large / small",
        ),
        [
            (
                f"{n:,} events",
                med[k] * 1e3,
                spread[k],
                snap_bytes[k],
                parts[k][0] * 1e3,
                parts[k][1] * 1e3,
                x(med[k] / med["small"]) if k == "large" else "",
            )
            for k, n in (("small", small), ("large", large))
        ],
    )
    r_append = p50["large"] / p50["small"]
    r_rebuild = med["large"] / med["small"]
    res.figures = {
        "durability": DURABILITY,
        "append_latency_s": {k: {"p50": p50[k], "samples": len(v)} for k, v in lat.items()},
        "rebuild_s": rebuild,
        "snapshot_bytes": snap_bytes,
        "snapshot_read_parse_s": parts,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "sizes": {"small": small, "large": large},
    }
    res.target(
        f"append p50, {large:,}-event store vs {small:,}", "<= 1.20x", x(r_append), r_append <= 1.2
    )
    res.target(
        f"rebuild, {large:,}-event session vs {small:,}",
        "<= 1.20x",
        x(r_rebuild),
        r_rebuild <= 1.2,
    )
    res.print_targets()
    return res

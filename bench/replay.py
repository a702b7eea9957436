"""Replay: rebuilding one long session, and auditing a whole log, against the
`eventsourcing` library and a raw-driver floor.

1. One session of 10,000 realistic events (the mix of bench.common's
   session_payloads: ~1,600 steps of TurnStarted / ToolCallRequested /
   PermissionDecided / ToolCallStarted / FileChanged / ToolCallCompleted with
   0.2-2 KB of output / TurnCompleted), rebuilt from SQLite and from PostgreSQL.
   - ours: `events.history.history(store, stream_id)`: read the stream's
     rows, decode and upcast each body, fold all three projections
     (SessionState, QuotaUsage, PermissionLedger) into frozen models, whole.
     "ours, snapshot": `events.replay.replay(store, stream_id)` with a snapshot
     at seq 9,900 (as `events.replay.load` leaves one): the snapshot plus a
     100-event tail. Since issue 18 that rebuilds the live part only (what a
     worker loads; `events.projections.window`), while the peer's snapshot
     holds its whole aggregate: less work, so that row has no target.
   - eventsourcing: `Application.repository.get(aggregate_id)` of `PeerSession`,
     an aggregate with the same 10,000 events (one `@event` method per event
     type, the same fields as our payloads) that keeps the same state in
     mutable attributes, on its SQLite and PostgreSQL persistence modules; no
     aggregate cache, so every get reads and decodes every event.
     "eventsourcing, snapshot": the same with its snapshot at version 9,900.
2. A whole log of 1,000,000 events (10,000 sessions of 100, 100 sessions a
   job), built for the run by the bulk path of bench.biglog (the rows
   `store.append` would write, inserted in large transactions) into a scratch
   SQLite file and a scratch PostgreSQL database (then vacuumed and analyzed,
   as autovacuum would), dropped afterwards; each backend's log is read once,
   untimed, before its rounds, so no contender reads it back from disk.
   - ours: `events.audit.whole_store` (what `events.replay.audit` runs): every
     hash chain, sequence and stream boundary verified and every stream folded
     into all three projections, over all cores (stream ranges, forked), and
     in one process; and verify only (what `audit verify` runs).
   - eventsourcing (SQLite only): the same sessions' PeerSession events read
     with `recorder.select_notifications` in pages of 2,000 and decoded by its
     mapper: no verification and no projection, so less work.
   - raw floor: the driver reading our rows in position order and checking
     each one's sha256 link (prev_hash + body == hash), nothing else.
   CPU seconds (the process and its forks) are printed too: events per
   CPU-second do not depend on what else the machine runs.

Contenders run interleaved, round by round; figures are medians of rounds.
The session rows print each rebuild's CPU time in this process beside its
wall time (the database server's is in neither, for either side): on a
shared machine the wall ratio is mostly the load's, the CPU ratio is not.
Other benchmarks may share the machine: compare lines of one run, not runs.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from eventsourcing.domain import Aggregate, event

from bench.biglog import insert_rows, log_rows, run_floor, run_ours
from bench.common import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    Options,
    Result,
    median,
    new_events,
    now,
    pg_available,
    pg_drop,
    pg_recreate,
    rm_sqlite,
    rounds,
    scratch_dir,
    session_payloads,
    show,
    x,
)

SESSION_EVENTS = 10_000
SNAPSHOT_AT = 9_900
STREAM_LEN = 100
CHUNK = 10  # events per append when generating the log
ACTIVE = 20  # sessions appended interleaved
PAGE = 2000  # rows per select for the peer (as our store pages)
TARGET_SESSION = 5.0  # ours at least 5x faster than eventsourcing's get
TARGET_LOG = 100_000  # events/s, audit of the whole log


# -- the peer's aggregate -----------------------------------------------------------


class PeerSession(Aggregate):
    """The peer's session: the state our three projections keep (session status,
    turns, calls, pending and confirmed file changes, patch; quota counters and
    the recent-call window; the permission ledger), written the way the
    eventsourcing docs model an aggregate: mutable attributes, one `@event`
    method per event type, so `Repository.get` decodes each stored event and
    calls its method. Its events carry the same fields as our payloads."""

    @event("SessionStarted")
    def __init__(self, job_id: str, target: str, steps: list[str], policy: str) -> None:
        self.job_id, self.target, self.steps, self.policy = job_id, target, steps, policy
        self.status = "running"
        self.error: str | None = None
        self.turns: list[dict[str, Any]] = []
        self.calls: dict[str, dict[str, Any]] = {}
        self.pending: list[dict[str, Any]] = []
        self.files: dict[str, list[str | None]] = {}
        self.patch: list[str] = []
        self.tool_calls: dict[str, int] = {}
        self.tool_failures = 0
        self.shell_cpu_s = self.shell_wall_s = 0.0
        self.bytes_written = self.output_bytes = 0
        self.recent_calls: list[Any] = []
        self.ledger: dict[str, dict[str, Any]] = {}

    @event("TurnStarted")
    def turn_started(self, turn: int, name: str, kind: str) -> None:
        self.turns.append({"turn": turn, "name": name, "kind": kind, "status": "running"})

    @event("TurnCompleted")
    def turn_completed(self, turn: int, status: str) -> None:
        for t in reversed(self.turns):
            if t["turn"] == turn:
                t["status"] = status
                break

    @event("ToolCallRequested")
    def tool_call_requested(self, call_id: str, turn: int, tool: str, args: dict[str, Any]) -> None:
        self.calls[call_id] = {
            "call_id": call_id,
            "turn": turn,
            "tool": tool,
            "status": "requested",
            "exit_code": None,
            "error": None,
            "output": "",
            "planned_count": 0,
        }
        self.ledger[call_id] = {
            "call_id": call_id,
            "seq": self.version + 1,
            "tool": tool,
            "args": args,
            "decision": None,
        }

    @event("PermissionDecided")
    def permission_decided(
        self, call_id: str, decision: str, rule_id: str, policy_hash: str, reason: str
    ) -> None:
        self.calls[call_id]["status"] = {"allow": "allowed", "deny": "denied", "ask": "asked"}[
            decision
        ]
        self.ledger[call_id].update(
            decision=decision,
            rule_id=rule_id,
            seq=self.version + 1,
            policy_hash=policy_hash,
            reason=reason,
        )

    @event("ToolCallStarted")
    def tool_call_started(
        self, call_id: str, planned_count: int, trace_id: str | None = None
    ) -> None:
        # trace_id (v2) is stored with the event and read back; like our session
        # fold, the state keeps no copy of it.
        self.calls[call_id].update(status="started", planned_count=planned_count)

    @event("FileChanged")
    def file_changed(
        self, call_id: str, path: str, before_hash: str | None, after_hash: str | None, diff: str
    ) -> None:
        self.pending.append(
            {
                "call_id": call_id,
                "path": path,
                "before_hash": before_hash,
                "after_hash": after_hash,
                "diff": diff,
            }
        )

    def _count(self, tool: str, output_bytes: int, cpu_s: float, duration_s: float) -> None:
        self.tool_calls[tool] = self.tool_calls.get(tool, 0) + 1
        self.recent_calls = (self.recent_calls + [self.modified_on])[-256:]
        self.output_bytes += output_bytes
        if tool == "shell":
            self.shell_cpu_s += cpu_s
            self.shell_wall_s += duration_s

    @event("ToolCallCompleted")
    def tool_call_completed(
        self,
        call_id: str,
        tool: str,
        exit_code: int,
        duration_s: float,
        cpu_s: float,
        output: str,
        output_bytes: int,
        output_digest: str,
        bytes_written: int,
        count: int,
    ) -> None:
        self.calls[call_id].update(status="completed", exit_code=exit_code, output=output)
        self._count(tool, output_bytes, cpu_s, duration_s)
        self.bytes_written += bytes_written
        mine = [c for c in self.pending if c["call_id"] == call_id]
        for c in mine:
            before = self.files[c["path"]][0] if c["path"] in self.files else c["before_hash"]
            self.files[c["path"]] = [before, c["after_hash"]]
            self.patch.append(c["diff"])
        if mine:
            self.pending = [c for c in self.pending if c["call_id"] != call_id]

    @event("ToolCallFailed")
    def tool_call_failed(
        self,
        call_id: str,
        tool: str,
        error: str,
        message: str,
        duration_s: float,
        cpu_s: float,
        output: str,
        output_bytes: int,
        retryable: bool,
    ) -> None:
        self.calls[call_id].update(status="failed", error=error, output=output)
        self._count(tool, output_bytes, cpu_s, duration_s)
        self.tool_failures += 1
        self.pending = [c for c in self.pending if c["call_id"] != call_id]

    @event("SessionCompleted")
    def session_completed(self, files_changed: int) -> None:
        self.status = "completed"

    @event("SessionFailed")
    def session_failed(self, error: str, message: str) -> None:
        self.status, self.error = "failed", f"{error}: {message}"


PEER_METHODS = {
    "TurnStarted": "turn_started",
    "TurnCompleted": "turn_completed",
    "ToolCallRequested": "tool_call_requested",
    "PermissionDecided": "permission_decided",
    "ToolCallStarted": "tool_call_started",
    "FileChanged": "file_changed",
    "ToolCallCompleted": "tool_call_completed",
    "ToolCallFailed": "tool_call_failed",
    "SessionCompleted": "session_completed",
    "SessionFailed": "session_failed",
}


def peer_session(
    payloads: list[Any], save: Callable[[PeerSession], Any] | None = None, every: int = 500
) -> PeerSession:
    """The peer aggregate with one event per payload (fields as JSON data),
    saved every `every` events (its PostgreSQL recorder pipelines a whole save:
    one of 10,000 events stalls psycopg's pipeline)."""
    first, *rest = payloads
    agg = PeerSession(**_fields(first))
    for i, pl in enumerate(rest, start=2):
        getattr(agg, PEER_METHODS[pl.type])(**_fields(pl))
        if save is not None and i % every == 0:
            save(agg)
    if save is not None:
        save(agg)
    return agg


def _fields(pl: Any) -> dict[str, Any]:
    data = pl.model_dump(mode="json")
    del data["type"]
    return data


def _peer_env(backend: str, where: str, snapshots: bool = True) -> dict[str, str]:
    env = {"IS_SNAPSHOTTING_ENABLED": "y" if snapshots else "n", "AGGREGATE_CACHE_MAXSIZE": ""}
    if backend == "sqlite":
        return env | {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": where}
    return env | {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": where,
        "POSTGRES_HOST": PG_HOST,
        "POSTGRES_PORT": str(PG_PORT),
        "POSTGRES_USER": PG_USER,
        "POSTGRES_PASSWORD": "",
    }


# -- 1. one long session -----------------------------------------------------------


class SessionSetup:
    """One backend's stores, each holding the 10,000-event session twice: plain,
    and with a snapshot at 9,900."""

    def __init__(self, backend: str, payloads: list[Any], our_url: str, peer_where: str) -> None:
        from eventsourcing.application import Application

        from events.projections import Projections, fold_records
        from events.replay import SNAPSHOT_VERSION
        from events.store import open_store
        from events.upcast import current

        self.backend = backend
        self.store = open_store(our_url, upgrade=True)
        self.plain, self.snapped = str(uuid.uuid4()), str(uuid.uuid4())
        for sid in (self.plain, self.snapped):
            news = new_events(payloads)
            for i in range(0, len(news), STREAM_LEN):
                self.store.append(sid, news[i : i + STREAM_LEN], i)
        head = fold_records(
            (
                current(orjson.loads(b))
                for _, b, _ in self.store.raw_stream(self.snapped)[:SNAPSHOT_AT]
            ),
            Projections.live(),
        )
        self.store.save_snapshot(
            self.snapped, head.last_seq, SNAPSHOT_VERSION, head.model_dump_json().encode()
        )
        self.app = Application(env=_peer_env(backend, peer_where))
        plain = peer_session(payloads, self.app.save)
        snapped = peer_session(payloads, self.app.save)
        self.app.take_snapshot(snapped.id, version=SNAPSHOT_AT)
        self.peer_plain, self.peer_snapped = plain.id, snapped.id

    def close(self) -> None:
        self.store.close()
        self.app.close()

    def contenders(self, cpu: dict[str, list[float]]) -> dict[str, Callable[[int], float]]:
        """Each contender's rebuild, timed (wall seconds returned, this
        process's CPU seconds appended to `cpu[name]`: the database server's
        are in neither, for either side)."""
        from events.history import history
        from events.replay import replay

        store, repo = self.store, self.app.repository

        def timed(name: str, fn: Callable[[], Any]) -> Callable[[int], float]:
            def run(r: int) -> float:
                c, t = time.process_time(), now()
                fn()
                el = now() - t
                if r >= 0:  # not the warm-up call
                    cpu.setdefault(name, []).append(time.process_time() - c)
                return el

            return run

        return {
            "ours": timed("ours", lambda: history(store, self.plain)),
            "ours, snapshot": timed("ours, snapshot", lambda: replay(store, self.snapped)),
            "eventsourcing": timed("eventsourcing", lambda: repo.get(self.peer_plain)),
            "eventsourcing, snapshot": timed(
                "eventsourcing, snapshot", lambda: repo.get(self.peer_snapped)
            ),
        }

    def same_work(self) -> dict[str, Any]:
        """What both rebuilt, side by side: the peer must have done the same work."""
        from events.history import history

        ours, peer = (
            history(self.store, self.plain),
            self.app.repository.get(self.peer_plain),
        )
        return {
            "ours": {
                "version": ours.last_seq,
                "turns": len(ours.session.turns),
                "calls": len(ours.session.calls),
                "files": len(ours.session.files_changed),
                "patch_bytes": len(ours.session.patch),
                "output_bytes": ours.quota.output_bytes,
            },
            "eventsourcing": {
                "version": peer.version,
                "turns": len(peer.turns),
                "calls": len(peer.calls),
                "files": len(peer.files),
                "patch_bytes": sum(map(len, peer.patch)),
                "output_bytes": peer.output_bytes,
            },
        }


def bench_session(res: Result, n_rounds: int) -> list[tuple[Any, ...]]:
    from events.store import open_store  # noqa: F401  (import cost outside timers)

    payloads = session_payloads(random.Random(7), "session-long", SESSION_EVENTS)
    backends = [("sqlite", None)]
    if pg_available():
        backends.append(("postgresql", ("orch_bench_replay_ours", "orch_bench_replay_es")))
    else:
        res.notes.append("PostgreSQL unreachable: its session rows are missing")
    summary = []
    with scratch_dir("replay") as d:
        for backend, dbs in backends:
            if dbs is None:
                ours_db, peer_db = d / "ours.sqlite", d / "es.sqlite"
                rm_sqlite(ours_db), rm_sqlite(peer_db)
                setup = SessionSetup(backend, payloads, f"sqlite:///{ours_db}", str(peer_db))
            else:
                # The peer's database by its full name (with BENCH_PG_SUFFIX).
                peer_db = pg_recreate(dbs[1]).rsplit("/", 1)[1]
                setup = SessionSetup(backend, payloads, pg_recreate(dbs[0]), peer_db)
            cpu: dict[str, list[float]] = {}
            try:
                fns = setup.contenders(cpu)
                for fn in fns.values():  # warm caches and connections once
                    fn(-1)
                samples = rounds(fns, n_rounds)
                work = setup.same_work()
            finally:
                setup.close()
                if dbs is not None:
                    for db in dbs:
                        pg_drop(db)
            med = {k: median(v) for k, v in samples.items()}
            label = f"{backend}, one session of {SESSION_EVENTS:,} events"
            med_cpu = {k: median(v) for k, v in cpu.items()}
            res.figures[f"session, {backend}"] = {
                "seconds": med,
                "samples": samples,
                "cpu_seconds": med_cpu,
                "loadavg": Path("/proc/loadavg").read_text().split()[:3],
                "rounds": n_rounds,
                "work": work,
            }
            show(
                f"[replay] {label} x {n_rounds} rounds (median; loadavg "
                f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])})",
                (
                    "contender",
                    "ms per rebuild",
                    "events/s",
                    "speedup of ours",
                    "min..max ms",
                    "CPU ms",
                    "CPU: speedup of ours",
                ),
                [
                    (
                        k,
                        1e3 * med[k],
                        SESSION_EVENTS / med[k],
                        x(med[k] / med[_ours(k)]),
                        f"{1e3 * min(v):,.1f}..{1e3 * max(v):,.1f}",
                        1e3 * med_cpu[k],
                        x(med_cpu[k] / med_cpu[_ours(k)]),
                    )
                    for k, v in samples.items()
                ],
            )
            if (
                work["ours"]["calls"] != work["eventsourcing"]["calls"]
                or work["ours"]["version"] != work["eventsourcing"]["version"]
            ):
                res.notes.append(f"{backend}: ours and the peer rebuilt different states: {work}")
            speed = med["eventsourcing"] / med["ours"]
            # eventsourcing / ours in each round (interleaved: the same phase of the machine)
            per_round = [p / o for p, o in zip(samples["eventsourcing"], samples["ours"])]
            speed_snap = med["eventsourcing, snapshot"] / med["ours, snapshot"]
            summary.append(
                (
                    f"{backend}: session rebuild, no snapshot",
                    1e3 * med["ours"],
                    1e3 * med["eventsourcing"],
                    x(speed),
                )
            )
            summary.append(
                (
                    f"{backend}: session rebuild, snapshot + 100",
                    1e3 * med["ours, snapshot"],
                    1e3 * med["eventsourcing, snapshot"],
                    x(speed_snap),
                )
            )
            cpu_speed = med_cpu["eventsourcing"] / med_cpu["ours"]
            res.target(
                f"{backend}: rebuild {SESSION_EVENTS:,}-event session, ours vs eventsourcing get",
                f">= {TARGET_SESSION:.0f}x faster",
                f"{x(speed)} (per round {x(min(per_round))}-{x(max(per_round))}; "
                f"CPU {x(cpu_speed)})",
                speed >= TARGET_SESSION,
            )
    return summary


def _ours(contender: str) -> str:
    """The row of ours that `contender` is compared with."""
    return "ours, snapshot" if "snapshot" in contender else "ours"


# -- 2. the whole log ----------------------------------------------------------------


def _no_sync_es(app: Any) -> Callable[[], Any]:
    create = app.recorder.datastore.pool._create_connection

    def fast() -> Any:
        c = create()
        c._sqlite_conn.execute("PRAGMA synchronous=OFF")
        return c

    return fast


def build_logs(n_events: int, d: Path, pg_db: str | None) -> dict[str, Any]:
    """Our log of `n_events` in SQLite (and in PostgreSQL database `pg_db`),
    written by the bulk path (bench.biglog), and the peer's SQLite log of the
    same sessions (its `Application.save`, one per session)."""
    from eventsourcing.application import Application

    from events.store import open_store

    ours, peer = d / "log.sqlite", d / "log-es.sqlite"
    rm_sqlite(ours), rm_sqlite(peer)
    app = Application(env=_peer_env("sqlite", str(peer), snapshots=False))
    app.recorder.datastore.pool._create_connection = _no_sync_es(app)  # type: ignore
    print(f"  building a log of {n_events:,} events (bulk insert, not timed)", flush=True)
    t0 = now()
    store = open_store(f"sqlite:///{ours}", upgrade=True)
    insert_rows(store, log_rows(n_events, also=lambda pls: peer_session(pls, app.save)))
    store.close()
    app.close()
    logs: dict[str, Any] = {"sqlite": f"sqlite:///{ours}", "peer": peer, "path": ours}
    if pg_db is not None:
        store = open_store(pg_recreate(pg_db), upgrade=True)
        insert_rows(store, log_rows(n_events))
        logs["postgresql"] = store.url
        # What autovacuum does to any table before long: statistics, and the
        # visibility map an index-only scan needs (without it, listing the
        # streams visits every stream's last row in the heap).
        with store.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM (ANALYZE) events"
            )
        store.close()
    print(f"  built in {now() - t0:,.0f} s", flush=True)
    return logs


def run_peer_read(path: Path, n_events: int) -> Callable[[int], float]:
    from eventsourcing.application import Application

    def run(_: int) -> float:
        app = Application(env=_peer_env("sqlite", str(path), snapshots=False))
        rec, to_event = app.recorder, app.mapper.to_domain_event
        t, start, count = now(), 1, 0
        while True:
            page = rec.select_notifications(start, PAGE)
            if not page:
                break
            for n in page:
                to_event(n)
            count += len(page)
            start = page[-1].id + 1
        el = now() - t
        app.close()
        if count != n_events:
            raise RuntimeError(f"peer log has {count} events, expected {n_events}")
        return el

    return run


def bench_log(res: Result, n_events: int, n_rounds: int) -> list[tuple[Any, ...]]:
    pg_db = f"orch_bench_replay_log_{os.getpid()}" if pg_available() else None
    if pg_db is None:
        res.notes.append("PostgreSQL unreachable: its whole-log rows are missing")
    summary = []
    with scratch_dir("replay-log") as d:
        logs = build_logs(n_events, d, pg_db)
        try:
            for backend in ("sqlite", "postgresql"):
                if backend in logs:
                    summary += _bench_log_on(res, backend, logs, n_events, n_rounds)
        finally:
            if pg_db is not None:
                pg_drop(pg_db)
    return summary


def _bench_log_on(
    res: Result, backend: str, logs: dict[str, Any], n_events: int, n_rounds: int
) -> list[tuple[Any, ...]]:
    from events.audit import cores

    url = logs[backend]
    cpu: dict[str, list[float]] = {k: [] for k in ("audit", "audit1", "verify")}
    fns = {
        "ours: audit (verify + projections), all cores": run_ours(url, "audit", cpu["audit"]),
        "ours: audit, one process": run_ours(url, "audit1", cpu["audit1"]),
        "ours: audit verify (no projections), all cores": run_ours(url, "verify", cpu["verify"]),
    }
    if backend == "sqlite":
        fns["eventsourcing (read + decode only)"] = run_peer_read(logs["peer"], n_events)
    fns["raw floor (read + sha256 only)"] = run_floor(url)
    # One untimed read of the whole log first, so no contender reads it from
    # disk: on a machine that pages out what sat unused for a minute (DAMON),
    # the other backend's rounds leave this one's log cold, and the first
    # contender of round 1 paid to read it back (seconds).
    fns["raw floor (read + sha256 only)"](0)
    samples = rounds(fns, n_rounds)
    med = {k: median(v) for k, v in samples.items()}
    rate = {k: n_events / v for k, v in med.items()}
    per_cpu = {k: n_events / median(v) for k, v in cpu.items()}
    main = "ours: audit (verify + projections), all cores"
    res.figures[f"whole log, {backend}"] = {
        "events": n_events,
        "seconds": med,
        "samples": samples,
        "rounds": n_rounds,
        "events_per_s": rate,
        "events_per_cpu_s": per_cpu,
        "cores": cores(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
    show(
        f"[replay] whole log, {backend}: {n_events:,} events in {n_events // STREAM_LEN:,} "
        f"sessions x {n_rounds} rounds (median; {cores()} cores; loadavg "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}; reads only: durability "
        "does not apply; the log read once, untimed, before the rounds)",
        ("contender", "seconds", "events/s", "us/event", "ours / this", "min..max s"),
        [
            (
                k,
                med[k],
                rate[k],
                1e6 / rate[k],
                x(rate[main] / rate[k]),
                f"{min(v):,.2f}..{max(v):,.2f}",
            )
            for k, v in samples.items()
        ],
    )
    show(
        f"[replay] whole log, {backend}: CPU (this process and its forks), load-independent",
        ("ours", "events per CPU-second"),
        [(k, v) for k, v in per_cpu.items()],
    )
    res.target(
        f"whole log, {backend}: audit (verify + all projections), all cores",
        f">= {TARGET_LOG:,} events/s",
        f"{rate[main]:,.0f}",
        rate[main] >= TARGET_LOG,
    )
    out = [(f"{backend}: whole log: audit, events/s", f"{rate[main]:,.0f}", "", "")]
    if backend == "sqlite":
        peer = rate["eventsourcing (read + decode only)"]
        out = [(out[0][0], out[0][1], f"{peer:,.0f}", x(rate[main] / peer))]
    return out


def run(opts: Options, *, session_only: bool = False) -> Result:
    res = Result("replay")
    summary = bench_session(res, 5 if opts.quick else 9)
    if not session_only:
        summary += bench_log(res, 100_000 if opts.quick else 1_000_000, 2)
    show(
        "[replay] summary (session: ms per rebuild; log: events/s; ratio = how many "
        "times faster ours is)",
        ("what", "ours", "eventsourcing", "ours vs es"),
        summary,
    )
    res.print_targets()
    return res


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.replay [--quick] [--session] [--json]`: the same bench
    as `python -m bench --only replay`; `--session` runs part 1 only (the
    session rows, without building the 1M-event logs), for quick iterations."""
    ap = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="5 session rounds, a 100k-event log")
    ap.add_argument("--session", action="store_true", help="the session rows only")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    res = run(Options(quick=args.quick), session_only=args.session)
    if args.json:
        sys.stdout.write(orjson.dumps(res.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if all(t.met for t in res.targets) else 1


if __name__ == "__main__":
    sys.exit(main())

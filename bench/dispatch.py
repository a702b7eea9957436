"""Dispatch latency: one no-op step through our whole path vs a bare Celery round trip.

- ours: `orchestrator.run_step` sent to a real `celery worker` process of our
  app (`tasks.app`, its production settings: late acks, prefetch 1, task
  events for Flower) and waited for (`send_task(...).get()`). The worker loads
  the session from the event store, asks the policy, plans and runs the step
  and appends its events, as in a real job. The step is the cheapest real one:
  a `replace` of a pattern that matches nothing in a one-file workspace (it
  reads the file, finds nothing, changes nothing). Sessions are started
  outside the timer and run 8 steps each (`last=False`), so a load reads a
  realistic stream of up to 50 events, never a pathological one.
- bare Celery (the target's peer): a no-op task (`noop.delay().get()`) on a
  stock Celery app with the same broker and result backend, served by its
  own worker process, with Celery's defaults: no task events, the message
  acked as the child takes it, prefetch 4 (one task in flight here), JSON,
  results in Redis.
- bare Celery, our Celery settings (reference, no target): the same no-op
  app with the settings our app adds to Celery's defaults (`tasks.conf`:
  late acks, reject on a lost worker, prefetch 1, task events and the
  client's `task-sent` for Flower): what those settings cost, told apart from
  what our task and its signal handlers cost.
- ours, no-op task (reference, no target): a no-op task on our app, served by
  the same worker as ours (`bench.dispatch_worker`: our settings, signal
  handlers, task-events consumer), alternating with our steps: ours minus
  this is what the step itself costs; this minus the bare peers is what our
  framework around a task costs.
- bare Celery + a durable commit (reference, no target): the bare peer's
  worker running a task that stores what a step records (its six events'
  worth of rows, of their mean size) in one statement, with our durability
  (SQLite WAL + synchronous=FULL in a file beside the store; PostgreSQL's
  default synchronous_commit=on, in the store's database): the least any
  durable step costs, so "it / bare Celery" is how much of the target the
  durable record alone takes on this machine, and "ours / it" is the rest.

All workers use the same pool (prefork with one child: the production pool,
its pipe to the child included) and run side by side; the contenders
alternate round by round. Each round trip is timed from the client's send to
its result, after a warm-up; the target row gives the p50 ratio and its
min-max over blocks of 50 consecutive round trips. Configurations: Redis
broker and results (db 13/14) with the event store on SQLite (WAL, every
commit fsynced) and on PostgreSQL; and, for reference, the embedded default
(our `orchsqla` SQLite broker, SQLite results, SQLite store).

"in-process" rows time the step body alone (`Runner.run_step` called
directly, no Celery) and its parts, to show where a worker's time goes; one
of them runs each step right after a 4 ms sleep, as a pool child runs its
task after waiting for it, because on a VM whose idle vCPUs halt at once the
same step then costs up to twice its CPU (the header prints the machine's
idle setup).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from celery import Celery

from bench.common import (
    REDIS_BACKEND,
    REDIS_BROKER,
    ROOT,
    Options,
    Result,
    median,
    now,
    pct,
    pg_available,
    pg_drop,
    pg_recreate,
    redis_available,
    rounds,
    scratch_dir,
    show,
    x,
)

STEPS_PER_SESSION = 8
QUEUE_BARE = "bench-bare"
TARGET_RATIO = 1.4
BLOCK = 50  # round trips per contender in each block of the ratio's spread
DURABILITY = (
    "event store and the durable-commit peer: SQLite WAL + synchronous=FULL (every commit "
    "fsynced), PostgreSQL synchronous_commit=on (the server default); Celery's messages and "
    "results as each broker and backend keeps them"
)

# -- the bare peer: a stock Celery app and its no-op task ----------------------
# The worker imports this module (`celery -A bench.dispatch:bare`); its broker
# and backend come from the environment the bench starts it with.

import tasks.broker  # noqa: E402,F401  (the orchsqla transport, for the embedded row)
import tasks.conf  # noqa: E402  (our Celery settings, without tasks.app's signal handlers)

QUEUE_SAME = "bench-bare-same"


def bare_app(queue: str, **conf: object) -> Celery:
    """A stock Celery app serving the no-op task on `queue`, with `conf` on
    top of Celery's defaults."""
    app = Celery(
        "bench-bare",
        broker=os.environ.get("BENCH_BARE_BROKER", REDIS_BROKER),
        backend=os.environ.get("BENCH_BARE_BACKEND", REDIS_BACKEND),
    )
    app.conf.update(
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options={"polling_interval": 0.005}
        if os.environ.get("BENCH_BARE_BROKER", "").startswith("orchsqla")
        else {},
        **conf,
    )
    app.task(name="bench.noop")(noop_body)
    app.task(name="bench.commit")(commit_body)
    return app


def noop_body() -> None:
    return None


# A step records six events (TurnStarted ... TurnCompleted) of about 615
# bytes each (measured on this bench's store).
COMMIT_ROWS, COMMIT_BODY = 6, b"x" * 615


@functools.cache
def _commit_db() -> tuple[Any, str]:
    """This process's connection to BENCH_COMMIT_URL (opened on first use, in
    the pool child) and the one INSERT a commit runs."""
    url = os.environ["BENCH_COMMIT_URL"]
    if url.startswith("sqlite:///"):
        import sqlite3

        conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit (id INTEGER PRIMARY KEY, body BLOB)")
        mark = "?"
    else:
        import psycopg

        conn = psycopg.connect(url, autocommit=True)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_commit (id bigserial PRIMARY KEY, body bytea)"
        )
        mark = "%s"
    return conn, "INSERT INTO bench_commit (body) VALUES " + ", ".join([f"({mark})"] * COMMIT_ROWS)


def commit_body() -> None:
    """One durable commit of a step's worth of rows: one statement, its own
    transaction (as our append is)."""
    conn, sql = _commit_db()
    conn.execute(sql, (COMMIT_BODY,) * COMMIT_ROWS)


# The target's peer: Celery's defaults (no task events, early acks, prefetch 4).
bare = bare_app(QUEUE_BARE)
# For reference: the same no-op with the Celery settings our app runs with
# (late acks, prefetch 1, task events for Flower: `tasks.conf`), to tell what
# those settings cost from what our task costs.
bare_same = bare_app(QUEUE_SAME, **tasks.conf.CELERY_SETTINGS)
BARE = "bare Celery"
SAME = "bare Celery, our Celery settings"
OURS_NOOP = "ours, no-op task"
COMMIT = "bare Celery + a durable commit"


# -- worker processes ------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The bench's environment without any ORCH_* of the caller's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "BENCH_BARE"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@contextlib.contextmanager
def celery_worker(
    app: str,
    queue: str,
    env: dict[str, str],
    log: Path,
    *,
    pool: str = "prefork",
    concurrency: int = 1,
) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` process (own process group), stopped warm, then killed."""
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--queues",
        queue,
        "--loglevel",
        "WARNING",
        "--hostname",
        f"bench-{uuid.uuid4().hex[:8]}@%h",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
    ]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=fh,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def flush_redis(*urls: str) -> None:
    import redis

    for url in urls:
        redis.Redis.from_url(url).flushdb()


# -- one configuration -------------------------------------------------------------


class Shape:
    """Where the broker, results and store of one configuration live."""

    def __init__(
        self, name: str, d: Path, store_url: str, broker: str | None, backend: str | None
    ) -> None:
        self.name, self.dir, self.store_url = name, d, store_url
        self.broker = broker or f"orchsqla+sqlite:///{d / 'broker.sqlite'}"
        self.backend = backend or f"db+sqlite:///{d / 'results.sqlite'}"
        self.embedded = broker is None

    def ours_env(self) -> dict[str, str]:
        return clean_env(
            ORCH_STATE_DIR=str(self.dir),
            ORCH_STORE_URL=self.store_url,
            ORCH_BROKER_URL=self.broker,
            ORCH_RESULT_BACKEND=self.backend,
            ORCH_LOG_LEVEL="WARNING",
        )

    def bare_env(self) -> dict[str, str]:
        return clean_env(
            BENCH_BARE_BROKER=self.broker,
            BENCH_BARE_BACKEND=self.backend,
            BENCH_COMMIT_URL=self.commit_url,
        )

    @property
    def commit_url(self) -> str:
        """Where the durable-commit peer writes: a file beside the SQLite store,
        or the PostgreSQL store's own database (a table of its own)."""
        if self.store_url.startswith("sqlite"):
            return f"sqlite:///{self.dir / 'bare-commit.sqlite'}"
        return self.store_url


def _workspace(d: Path) -> Path:
    ws = d / "workspace"
    ws.mkdir(exist_ok=True)
    (ws / "mod.py").write_text("def load_user(uid):\n    return {'id': uid}\n")
    return ws


def _step() -> dict[str, Any]:
    from orchestrator.run.steps import ReplaceStep

    return ReplaceStep(
        name="noop", pattern=r"\bno_such_name\b", replacement="other_name"
    ).model_dump(mode="json")


class Sessions:
    """Started sessions (outside the timer), handed out one step at a time."""

    def __init__(self, store_url: str, ws: Path) -> None:
        from events.store import open_store
        from orchestrator.run.runner import Runner

        self.store = open_store(store_url, upgrade=True)
        self.runner = Runner(self.store, "worker:bench:client")
        self.ws = ws
        self.job = f"job-{uuid.uuid4().hex}"
        self.current: Any = None
        self.index = STEPS_PER_SESSION

    def next(self) -> tuple[dict[str, Any], int]:
        from events.replay import load
        from orchestrator.run.runner import Ticket

        if self.index >= STEPS_PER_SESSION:
            t = Ticket(
                job_id=self.job,
                session_id=str(uuid.uuid4()),
                target="ws",
                path=str(self.ws),
                steps=("noop",) * STEPS_PER_SESSION,
            )
            self.runner._start(t, load(self.store, t.session_id), None)
            self.current, self.index = t, 0
        self.index += 1
        return self.current.model_dump(mode="json"), self.index - 1


def bench_shape(shape: Shape, n: int, warm: int, pool: str) -> dict[str, list[float]]:
    from orchestrator.config.settings import Settings
    from tasks.app import make_app

    ours_app = make_app(
        Settings(
            state_dir=shape.dir,
            store_url=shape.store_url,
            broker_url=shape.broker,
            result_backend=shape.backend,
        )
    )
    options = {"polling_interval": 0.005} if shape.embedded else {}
    clients = {
        name: Celery("bench-bare", broker=shape.broker, backend=shape.backend)
        for name in (QUEUE_BARE, QUEUE_SAME)
    }
    clients[QUEUE_BARE].conf.update(task_default_queue=QUEUE_BARE, broker_transport_options=options)
    clients[QUEUE_SAME].conf.update(
        task_default_queue=QUEUE_SAME,
        broker_transport_options=options,
        **tasks.conf.CELERY_SETTINGS,
    )
    noops = {q: c.task(name="bench.noop")(noop_body) for q, c in clients.items()}
    sessions = Sessions(shape.store_url, _workspace(shape.dir))
    step = _step()
    log = shape.dir / "workers.log"
    poll = 0.001 if shape.embedded else 0.5  # the database backend polls; Redis pushes

    def ours(_: int) -> float:
        ticket, index = sessions.next()
        t = now()
        status = ours_app.send_task(
            "orchestrator.run_step",
            args=[ticket, index, step, False],
            queue="orchestrator",
            ignore_result=False,  # stored, as the peers' results are: the round trip waits on it
        ).get(timeout=60, interval=poll)
        dt = now() - t
        if status != "running":
            raise RuntimeError(f"step ended {status!r}; see {log}")
        return dt

    def ours_noop(_: int) -> float:
        t = now()
        ours_app.send_task("bench.ours_noop", queue="orchestrator", ignore_result=False).get(
            timeout=60, interval=poll
        )
        return now() - t

    def peer(queue: str) -> Callable[[int], float]:
        def one(_: int) -> float:
            t = now()
            noops[queue].delay().get(timeout=60, interval=poll)
            return now() - t

        return one

    def commit(_: int) -> float:
        t = now()
        clients[QUEUE_BARE].send_task("bench.commit", queue=QUEUE_BARE).get(
            timeout=60, interval=poll
        )
        return now() - t

    with (
        celery_worker("bench.dispatch_worker", "orchestrator", shape.ours_env(), log, pool=pool),
        celery_worker("bench.dispatch:bare", QUEUE_BARE, shape.bare_env(), log, pool=pool),
        celery_worker("bench.dispatch:bare_same", QUEUE_SAME, shape.bare_env(), log, pool=pool),
    ):
        fns = {
            "ours": ours,
            BARE: peer(QUEUE_BARE),
            SAME: peer(QUEUE_SAME),
            OURS_NOOP: ours_noop,
            COMMIT: commit,
        }
        for _ in range(warm):
            for fn in fns.values():
                fn(0)
        half = n // 2  # alternate who goes first
        a = rounds(fns, half)
        b = rounds(dict(reversed(fns.items())), n - half)
    sessions.store.close()
    with contextlib.suppress(Exception):
        ours_app.close()
        for c in clients.values():
            c.close()
    return {k: a[k] + b[k] for k in fns}


def block_ratios(ours: list[float], bare: list[float]) -> list[float]:
    """The p50 ratio of each BLOCK consecutive round trips (both contenders
    ran them interleaved, in the same minutes): the spread of the ratio."""
    return [
        median(ours[i : i + BLOCK]) / median(bare[i : i + BLOCK])
        for i in range(0, len(ours) - BLOCK + 1, BLOCK)
    ]


# About what a pool child waits between two round trips here: the rest of
# the round trip (client, broker, worker's main process, result).
WAIT_S = 0.004
AFTER_WAIT = f"run_step right after a {WAIT_S * 1e3:g} ms wait"


def in_process(store_url: str, ws: Path, n: int) -> dict[str, list[float]]:
    """The worker's step body without Celery, and its parts. Every other step
    runs right after a sleep of WAIT_S, as a pool child's does after waiting
    for its next task: on a VM whose idle vCPUs halt at once, the same code
    runs slower after a wait (docs/performance.md), which the loop's own
    figure hides and every round trip pays."""
    from events.replay import load
    from orchestrator.run.runner import Runner, Ticket
    from orchestrator.run.steps import ReplaceStep

    sessions = Sessions(store_url, ws)
    runner = Runner(sessions.store, "worker:bench:inproc")
    step = ReplaceStep.model_validate(_step())
    out: dict[str, list[float]] = {"run_step": [], AFTER_WAIT: [], "load (full replay)": []}
    seen: list[str] = []
    for i in range(n):
        ticket, index = sessions.next()
        t = Ticket.model_validate(ticket)
        seen.append(t.session_id)
        waited = i % 2 == 1
        if waited:
            time.sleep(WAIT_S)
        s = now()
        runner.run_step(t, index, step, last=False)
        out[AFTER_WAIT if waited else "run_step"].append(now() - s)
    # Apart from the steps: a replay between two steps would leave the second
    # as cold as a wait does.
    for sid in seen:
        s = now()
        load(sessions.store, sid)
        out["load (full replay)"].append(now() - s)
    sessions.store.close()
    return out


def run(opts: Options) -> Result:
    res = Result("dispatch")
    n, warm = (100, 20) if opts.quick else (400, 40)
    pool = "prefork"
    if not redis_available():
        res.notes.append(f"Redis unreachable at {REDIS_BROKER}: only the embedded row runs")
    rows, parts = [], []
    with scratch_dir("dispatch") as d:
        shapes: list[Shape] = []
        if redis_available():
            shapes.append(
                Shape(
                    "redis broker, sqlite store",
                    d / "sqlite",
                    f"sqlite:///{d / 'sqlite' / 'events.sqlite'}",
                    REDIS_BROKER,
                    REDIS_BACKEND,
                )
            )
            if pg_available():
                shapes.append(
                    Shape(
                        "redis broker, postgresql store",
                        d / "pg",
                        pg_recreate("orch_bench_dispatch"),
                        REDIS_BROKER,
                        REDIS_BACKEND,
                    )
                )
            else:
                res.notes.append("PostgreSQL unreachable: its row is missing")
        shapes.append(
            Shape(
                "embedded orchsqla broker, sqlite store",
                d / "embedded",
                f"sqlite:///{d / 'embedded' / 'events.sqlite'}",
                None,
                None,
            )
        )
        try:
            for shape in shapes:
                shape.dir.mkdir(parents=True, exist_ok=True)
                if not shape.embedded:
                    flush_redis(REDIS_BROKER, REDIS_BACKEND)
                samples = bench_shape(shape, n, warm, pool)
                p50 = {k: median(v) * 1e3 for k, v in samples.items()}
                p99 = {k: pct(v, 99) * 1e3 for k, v in samples.items()}
                r = p50["ours"] / p50[BARE]
                blocks = block_ratios(samples["ours"], samples[BARE])
                spread = f"{x(r)} ({x(min(blocks))}-{x(max(blocks))} over {len(blocks)} blocks)"
                same = block_ratios(samples["ours"], samples[SAME])
                res.notes.append(
                    f"{shape.name}: ours p50 / {SAME} p50 (reference, no target): "
                    f"{x(p50['ours'] / p50[SAME])} ({x(min(same))}-{x(max(same))})"
                )
                res.notes.append(
                    f"{shape.name}: {OURS_NOOP} p50 / {SAME} p50 (our framework around "
                    f"a task): {x(p50[OURS_NOOP] / p50[SAME])}; ours - {OURS_NOOP} "
                    f"(the step itself): {p50['ours'] - p50[OURS_NOOP]:.2f} ms"
                )
                res.notes.append(
                    f"{shape.name}: {COMMIT} p50 / {BARE} p50 (the durable record alone, "
                    f"{COMMIT_ROWS} rows of {len(COMMIT_BODY)} bytes): "
                    f"{x(p50[COMMIT] / p50[BARE])}, {p50[COMMIT] - p50[BARE]:.2f} ms; "
                    f"ours / {COMMIT}: {x(p50['ours'] / p50[COMMIT])}"
                )
                res.figures[shape.name] = {
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "round_trips": n,
                    "pool": pool,
                    "ratio_p50": r,
                    "ratio_p50_blocks": blocks,
                    "ratio_p50_same_settings": p50["ours"] / p50[SAME],
                    "ratio_p50_ours_noop_vs_same_settings": p50[OURS_NOOP] / p50[SAME],
                    "step_ms": p50["ours"] - p50[OURS_NOOP],
                    "ratio_p50_commit_vs_bare": p50[COMMIT] / p50[BARE],
                    "commit_ms": p50[COMMIT] - p50[BARE],
                }
                rows += [
                    (
                        f"{shape.name}: {k}",
                        p50[k],
                        p99[k],
                        x(p50[k] / p50[BARE]),
                        x(p50[k] / p50[SAME]),
                    )
                    for k in samples
                ]
                if not shape.embedded:
                    res.target(
                        f"{shape.name}: ours p50 vs {BARE} p50 (Celery's defaults)",
                        f"<= {TARGET_RATIO:.2f}x",
                        spread,
                        r <= TARGET_RATIO,
                    )
                inproc = in_process(shape.store_url, _workspace(shape.dir), n)
                parts += [
                    (f"{shape.name}: {k}", median(v) * 1e3, pct(v, 99) * 1e3)
                    for k, v in inproc.items()
                ]
        finally:
            pg_drop("orch_bench_dispatch")
    show(
        f"[dispatch] round trip, send to result ({n} per contender after {warm} warm-up, "
        f"{pool} pool with 1 child, interleaved); durability: {DURABILITY}",
        ("configuration: contender", "p50 ms", "p99 ms", "p50 / bare", "p50 / same settings"),
        rows,
    )
    show(
        "[dispatch] in-process step body (no Celery), for where the time goes",
        ("configuration: part", "p50 ms", "p99 ms"),
        parts,
    )
    res.figures["durability"] = DURABILITY
    res.figures["in_process_ms"] = {name: {"p50": a, "p99": b} for name, a, b in parts}
    res.print_targets()
    return res

"""Agent overhead: one agent session through a real worker vs the same model and
tool calls made directly in one process.

- ours: a one-target agent job, built and recorded as `orchestrator submit`
  does (`jobs.prepare` + `jobs.record`, outside the timer), then enqueued
  with `tasks.dispatch.enqueue` to a real `celery worker` process of our app
  (`tasks.app`, production settings, prefork with one child), Redis broker
  and results, PostgreSQL store. The scripted model answers turn 1 with tool
  calls (`read` of a small file of the workspace) and turn 2 with a final
  message. Each model call and each tool call is its own
  `orchestrator.agent_advance` task, re-enqueued by the one before. Timed
  from the client's enqueue to SessionCompleted being committed: a trigger
  in the bench's own database sends a NOTIFY when that row is inserted, so
  the client waits on LISTEN instead of polling (no poll interval in the
  figure, no polling load on the 2 cores).
- direct: the same work in this process: `ScriptedProvider.complete` on the
  same two requests (the messages the worker built, read back from a finished
  session), and between them `orchestrator.tools.files.read_file` on the same
  paths with the agent's output cap.
- bare Celery chain: a stock no-op task that re-enqueues itself as many times
  as ours runs tasks per session (a session of k tool calls is k + 3 tasks),
  on an app with our Celery settings (late acks, prefetch 1, task events),
  the same broker and results, ending with the same kind of NOTIFY. It is
  the floor of "one task per unit of work" on this broker.

Two scripts: 1 tool call in turn 1 (the issue's shape), and 5 (to separate
the per-session cost from the per-call cost). "added" is ours minus direct,
per round; "per tool call" is added / calls, and the marginal cost of a call
is (added with 5 - added with 1) / 4.

For where the time goes, two more views:
- bodies in process: the worker's task bodies (`AgentLoop.advance` until it
  stops, no Celery) on the same store, a contender of its own in the rounds
  (so it meets the same phases of a noisy machine), timed to
  SessionCompleted's append; ours minus bodies is what Celery adds (broker
  hops, the prefork pipe, results, task events), next to the bare chain.
  While it runs, its parts are timed exclusively (appends, stream reads,
  snapshot lookups, folds, prompt building, policy, the provider, the tool,
  the job report) and PostgreSQL round trips are counted and timed by kind at
  the driver.
- the real worker's timeline: the worker runs our app with Celery signal
  receivers that note when each task starts, publishes its successor and
  returns (`bench.agent:probed`, a few microseconds a task), so a session's
  time splits into the client's enqueue, the first delivery, the task bodies,
  the re-enqueue publishes and the hops between tasks.

All contenders alternate round by round, in an order that flips every round,
after a warm-up. PostgreSQL and Redis are the local ones: a database of our
own (dropped after) and Redis db 6 (`BENCH_AGENT_REDIS`; flushed before and
after, so the bench will not start while another client uses that db).
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from celery import Celery

from bench.common import (
    CACHE,
    Options,
    Result,
    median,
    now,
    pct,
    pg_available,
    pg_drop,
    pg_recreate,
    redis_available,
    show,
    x,
)

DB = "orch_bench_agent"
# A Redis db of our own for broker and results: the other benches use 13/14,
# the tests 9 and 11-15. It is flushed before and after, so the bench refuses
# to run when another client is connected to it.
REDIS_URL = os.environ.get("BENCH_AGENT_REDIS", "redis://127.0.0.1:6379/6")
CHANNEL = "bench_agent"
QUEUE_BARE = "bench-agent-bare"
TARGET_MS = 10.0  # p50 added per tool call
FILES = 5
INSTRUCTION = "Explain what load_user returns."

# -- the bare peer: our Celery settings, a no-op task that re-enqueues itself ------
# The worker imports this module (`celery -A bench.agent:bare`).

bare = Celery(
    "bench-agent-bare",
    broker=os.environ.get("BENCH_BARE_BROKER", REDIS_URL),
    backend=os.environ.get("BENCH_BARE_BACKEND", REDIS_URL),
)
bare.conf.update(
    task_default_queue=QUEUE_BARE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)
_notify: tuple[int, Any] | None = None


@bare.task(name="bench.agent.hop")
def hop(left: int, stream: str) -> str:
    if left > 1:
        hop.apply_async((left - 1, stream))
        return "continue"
    global _notify
    if _notify is None or _notify[0] != os.getpid():
        import psycopg

        _notify = (os.getpid(), psycopg.connect(os.environ["BENCH_AGENT_PG"], autocommit=True))
    _notify[1].execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"BareDone {stream}"))
    return "completed"


# -- our app, probed: the worker runs `celery -A bench.agent:probed`, which is
# `tasks.app.app` with Celery signal receivers noting (time.time(), appended to
# a file) when each task starts, publishes its successor and returns: a few
# microseconds a task, and where the worker's milliseconds go without a
# profiler's distortion.

_probe_fd: tuple[int, int] | None = None


def _note(kind: str, ticket: Any) -> None:
    global _probe_fd
    if not isinstance(ticket, dict) or "session_id" not in ticket:
        return
    if _probe_fd is None or _probe_fd[0] != os.getpid():
        _probe_fd = (
            os.getpid(),
            os.open(os.environ["BENCH_AGENT_PROBE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
        )
    os.write(_probe_fd[1], f"{time.time():.6f} {kind} {ticket['session_id']}\n".encode())


_probed_app: Celery | None = None


def _probed() -> Celery:
    global _probed_app
    from celery import signals

    from tasks.app import app

    if _probed_app is not None:  # looked up more than once: connect once
        return _probed_app
    _probed_app = app

    def first_arg(args: Any) -> Any:
        return args[0] if args else None

    signals.task_prerun.connect(lambda args=None, **_: _note("start", first_arg(args)), weak=False)
    signals.task_postrun.connect(lambda args=None, **_: _note("end", first_arg(args)), weak=False)
    signals.before_task_publish.connect(
        lambda body=None, **_: _note("publish", first_arg(body[0]) if body else None), weak=False
    )
    signals.after_task_publish.connect(
        lambda body=None, **_: _note("published", first_arg(body[0]) if body else None), weak=False
    )
    return app


def __getattr__(name: str) -> Any:
    if name == "probed":
        return _probed()
    raise AttributeError(name)


# -- the scripts and the workspace ---------------------------------------------------


def script(calls: int) -> list[dict[str, Any]]:
    return [
        {
            "content": "Reading the modules first.",
            "tool_calls": [
                {"name": "read", "arguments": {"path": f"pkg/mod_{i % FILES}.py"}}
                for i in range(calls)
            ],
        },
        {"content": "load_user returns a dict with the user's id and name."},
    ]


def workspace(base: Path) -> Path:
    ws = base / "repo"
    (ws / "pkg").mkdir(parents=True, exist_ok=True)
    for i in range(FILES):
        (ws / "pkg" / f"mod_{i}.py").write_text(
            f'"""Module {i}."""\n\n\ndef load_user(uid):\n'
            f'    """The user {i} knows by id."""\n'
            "    return {'id': uid, 'name': f'user-{uid}'}\n\n\n"
            "def fetch_all(ids):\n    return [load_user(i) for i in ids]\n" * 4
        )
    return ws


def job_spec(calls: int) -> Any:
    from orchestrator.run.jobspec import AgentSpec, JobSpec

    return JobSpec(
        name=f"bench agent {calls}",
        targets=("repo",),
        agent=AgentSpec(instruction=INSTRUCTION, provider="scripted", turns=tuple(script(calls))),
    )


# -- the store: a NOTIFY on the rows the client waits for ----------------------------

TRIGGER = f"""
CREATE OR REPLACE FUNCTION bench_agent_notify() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('{CHANNEL}', NEW.type || ' ' || NEW.stream_id);
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER bench_agent_notify AFTER INSERT ON events FOR EACH ROW
  WHEN (NEW.type IN ('SessionCompleted', 'SessionFailed', 'JobCompleted'))
  EXECUTE FUNCTION bench_agent_notify();
"""


class Waiter:
    """LISTENs on the bench channel; `wait(kind, stream)` blocks until that row
    is committed (notifications arrive at commit)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(f"LISTEN {CHANNEL}")
        self.seen: set[str] = set()

    def wait(self, stream: str, *kinds: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for kind in kinds:
                if f"{kind} {stream}" in self.seen:
                    self.seen.discard(f"{kind} {stream}")
                    return kind
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {'/'.join(kinds)} for {stream} within {timeout:.0f} s")
            for n in self.conn.notifies(timeout=left, stop_after=1):
                self.seen.add(n.payload)

    def close(self) -> None:
        self.conn.close()


# -- the contenders ---------------------------------------------------------------------


class Ours:
    """Agent jobs through the real worker."""

    def __init__(self, store: Any, app: Celery, waiter: Waiter, base: Path) -> None:
        self.store, self.app, self.waiter, self.base = store, app, waiter, base
        self.specs = {k: job_spec(k) for k in (1, 5)}
        self.timeout = 120.0  # the first session waits for the worker to start
        self.enqueue_s: list[float] = []
        self.last: dict[int, str] = {}
        self.walls: dict[int, list[tuple[str, float, float, float]]] = {1: [], 5: []}

    def __call__(self, calls: int) -> float:
        from orchestrator.run import jobs
        from tasks.dispatch import enqueue

        spec = self.specs[calls]
        job_id, tickets = jobs.prepare(spec, self.base)
        jobs.record(self.store, spec, job_id, tickets, "cli:bench")
        sid = tickets[0].session_id
        wall = time.time()
        t = now()
        enqueue(tickets, (), app=self.app, sign=False)
        e = now()
        try:
            kind = self.waiter.wait(sid, "SessionCompleted", "SessionFailed", timeout=self.timeout)
        except TimeoutError:
            stored = [e.type for e in self.store.read_stream(sid)]
            raise RuntimeError(
                f"session {sid} not finished after {self.timeout:.0f} s; "
                f"stored so far: {stored or 'nothing'}"
            ) from None
        dt = now() - t
        self.walls[calls].append((sid, wall, wall + (e - t), wall + dt))
        if kind != "SessionCompleted":
            raise RuntimeError(f"session {sid} failed; see the worker log")
        self.enqueue_s.append(e - t)
        self.last[calls] = sid
        self.timeout = 30.0
        # Outside the timer: the worker finishes the job (SessionFinished,
        # JobCompleted) before the next round starts.
        self.waiter.wait(job_id, "JobCompleted")
        time.sleep(0.003)
        return dt


class Direct:
    """The same model calls and tool calls, in this process."""

    def __init__(self, ws: Path) -> None:
        from orchestrator.agent.providers.scripted import ScriptedProvider

        self.ws = ws
        self.providers = {k: ScriptedProvider(script(k)) for k in (1, 5)}
        self.requests: dict[int, tuple[Any, Any]] = {}

    def learn(self, store: Any, calls: int, sid: str) -> None:
        """The two requests the worker sent, rebuilt from a finished session."""
        from events.replay import load
        from orchestrator.agent import core as agent
        from orchestrator.agent.providers.base import ModelRequest

        state = load(store, sid)
        msgs = agent.messages(state, False)
        a = state.session.agent
        tools = agent.tool_specs(a.tools)
        first = ModelRequest(model=a.model, messages=msgs[:2], tools=tools)
        second = ModelRequest(model=a.model, messages=msgs[: 3 + calls], tools=tools)
        assert [m["role"] for m in second.messages][-calls:] == ["tool"] * calls
        self.requests[calls] = (first, second)

    def __call__(self, calls: int) -> float:
        import orjson

        from orchestrator.agent.core import AGENT_OUTPUT_BYTES
        from orchestrator.tools.files import read_file

        provider = self.providers[calls]
        first, second = self.requests[calls]
        t = now()
        reply = provider.complete(first)
        for call in reply.tool_calls:
            read_file(self.ws, orjson.loads(call.arguments)["path"], AGENT_OUTPUT_BYTES)
        final = provider.complete(second)
        dt = now() - t
        assert not final.tool_calls and len(reply.tool_calls) == calls
        return dt


class BareChain:
    def __init__(self, waiter: Waiter) -> None:
        self.client = Celery("bench-agent-bare", broker=REDIS_URL, backend=REDIS_URL)
        self.client.conf.update(task_default_queue=QUEUE_BARE, task_send_sent_event=True)
        self.hop = self.client.task(name="bench.agent.hop")(hop.run)
        self.waiter = waiter
        self.timeout = 120.0  # the first chain waits for the worker to start

    def __call__(self, tasks: int) -> float:
        stream = uuid.uuid4().hex
        t = now()
        self.hop.apply_async((tasks, stream))
        self.waiter.wait(stream, "BareDone", timeout=self.timeout)
        dt = now() - t
        self.timeout = 30.0
        time.sleep(0.003)
        return dt


# -- the worker's bodies in process, their parts timed ----------------------------------


class Parts:
    """Exclusive time per part: a wrapped call's time minus its wrapped callees'."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.stack: list[float] = []

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **kw: Any) -> Any:
            self.stack.append(0.0)
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                dt = time.perf_counter() - t
                inner = self.stack.pop()
                self.total[name] = self.total.get(name, 0.0) + dt - inner
                self.count[name] = self.count.get(name, 0) + 1
                if self.stack:
                    self.stack[-1] += dt

        return timed


@contextlib.contextmanager
def instrumented(parts: Parts) -> Iterator[None]:
    from unittest import mock

    import orchestrator.agent.core as agent_mod
    import orchestrator.guard.decision as decision_mod
    import orchestrator.run.runner as runner_mod
    from events.store import SqlEventStore
    from orchestrator.agent.providers.scripted import ScriptedProvider
    from orchestrator.tools.kinds.files import ReadTool

    targets = [
        (SqlEventStore, "append", "store: append (one transaction)"),
        (SqlEventStore, "raw_stream", "store: read the stream's tail"),
        (SqlEventStore, "load_snapshot", "store: snapshot lookup"),
        (runner_mod, "fold", "fold events into projections"),
        (runner_mod, "job_state", "job report: read + fold the job stream"),
        (agent_mod, "messages", "build the prompt (messages, system template)"),
        (decision_mod, "decide", "policy decision"),
        (ReadTool, "run", "tool: read_file (the work)"),
        (ScriptedProvider, "complete", "model: ScriptedProvider.complete (the work)"),
    ]
    with contextlib.ExitStack() as stack:
        for owner, attr, name in targets:
            stack.enter_context(
                mock.patch.object(owner, attr, parts.wrap(name, getattr(owner, attr)))
            )
        yield


class RoundTrips:
    """PostgreSQL round trips by kind, timed at the driver (psycopg 3)."""

    KINDS = (
        ("; ", "read: pool_pre_ping (`;`)"),
        ("SELECT snapshots", "read: snapshot lookup (+ its BEGIN)"),
        ("SELECT events", "read: stream tail (+ its BEGIN)"),
        ("SELECT seq, hash", "append: head + idempotency-key lookup"),
        ("INSERT INTO events", "append: INSERT ... RETURNING (autocommit, WAL flush)"),
    )

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.begins = 0

    def add(self, kind: str, dt: float) -> None:
        self.total[kind] = self.total.get(kind, 0.0) + dt
        self.count[kind] = self.count.get(kind, 0) + 1

    def kind(self, query: Any) -> str:
        text = (query if isinstance(query, str) else str(query)).strip() + " "
        return next((name for prefix, name in self.KINDS if text.startswith(prefix)), "other")

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        from unittest import mock

        import psycopg
        import psycopg._connection_base as base

        execute, rollback = psycopg.Cursor.execute, psycopg.Connection.rollback
        command = base.BaseConnection._exec_command
        rts = self

        def timed_execute(cur: Any, query: Any, *a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return execute(cur, query, *a, **kw)
            finally:
                rts.add(rts.kind(query), time.perf_counter() - t)

        def timed_rollback(conn: Any) -> None:
            t = time.perf_counter()
            try:
                rollback(conn)
            finally:
                rts.add(
                    "read: ROLLBACK when the pool takes the connection back",
                    time.perf_counter() - t,
                )

        def counted_command(conn: Any, cmd: Any, *a: Any, **kw: Any) -> Any:
            if bytes(cmd if isinstance(cmd, (bytes, bytearray)) else str(cmd).encode()).startswith(
                b"BEGIN"
            ):
                rts.begins += 1
            return command(conn, cmd, *a, **kw)

        with (
            mock.patch.object(psycopg.Cursor, "execute", timed_execute),
            mock.patch.object(psycopg.Connection, "rollback", timed_rollback),
            mock.patch.object(base.BaseConnection, "_exec_command", counted_command),
        ):
            yield


class InProcess:
    """The worker's task bodies in this process (`AgentLoop.advance` until it
    stops, no Celery) on the same store: a contender of its own in the rounds,
    so it runs in the same phases of a noisy machine as the worker. Timed to
    SessionCompleted's append returning (what ours waits for) and to the end
    of the last body (the job report included); per task body; and, while it
    runs, the parts (exclusive) and the PostgreSQL round trips."""

    def __init__(self, store_url: str, base: Path) -> None:
        from events.store import SqlEventStore
        from orchestrator.agent.loop import AgentLoop
        from orchestrator.agent.providers.factory import providers_for
        from orchestrator.config.settings import Settings
        from orchestrator.run.runner import Runner

        self.store = SqlEventStore(store_url)
        self.base = base
        settings = Settings(state_dir=base / "inproc", store_url=store_url)
        self.loop = AgentLoop(
            Runner(self.store, "worker:bench:inproc"),
            providers_for(settings),
            default_provider="scripted",
        )
        self.specs = {k: job_spec(k) for k in (1, 5)}
        self.parts = {k: Parts() for k in (1, 5)}
        self.rts = {k: RoundTrips() for k in (1, 5)}
        self.whole: dict[int, list[float]] = {1: [], 5: []}
        self.units: dict[int, list[list[float]]] = {1: [], 5: []}
        self.sessions = {1: 0, 5: 0}
        self.measuring = False

    def _ticket(self, calls: int) -> Any:
        from orchestrator.run import jobs

        spec = self.specs[calls]
        job_id, tickets = jobs.prepare(spec, self.base)
        jobs.record(self.store, spec, job_id, tickets, "cli:bench")
        return tickets[0]

    def _advance_all(self, t: Any) -> tuple[list[float], str]:
        units = []
        while True:
            u = time.perf_counter()
            outcome = self.loop.advance(t, task_id=uuid.uuid4().hex)
            units.append(time.perf_counter() - u)
            if outcome != "continue":
                return units, outcome

    def __call__(self, calls: int) -> float:
        from unittest import mock

        from events.store import SqlEventStore

        t = self._ticket(calls)
        done: list[float] = []
        with contextlib.ExitStack() as stack:
            if self.measuring:
                stack.enter_context(instrumented(self.parts[calls]))
                stack.enter_context(self.rts[calls].counting())
            append = SqlEventStore.append  # the timed one while measuring

            def noting(store: Any, stream: str, batch: Any, expected: Any) -> Any:
                out = append(store, stream, batch, expected)
                if batch and batch[-1].type == "SessionCompleted":
                    done.append(time.perf_counter())
                return out

            stack.enter_context(mock.patch.object(SqlEventStore, "append", noting))
            s0 = time.perf_counter()
            units, outcome = self._advance_all(t)
            end = time.perf_counter()
        if outcome != "completed" or not done:
            raise RuntimeError(f"in-process session ended {outcome!r}")
        if self.measuring:
            self.whole[calls].append(end - s0)
            self.units[calls].append(units)
            self.sessions[calls] += 1
        return done[0] - s0

    def profile(self, calls: int, n: int) -> str:
        tickets = [self._ticket(calls) for _ in range(n)]
        prof = cProfile.Profile()
        prof.enable()
        for t in tickets:
            self._advance_all(t)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
        return buf.getvalue()

    def close(self) -> None:
        self.store.close()


def timeline(
    probe: Path,
    sessions: list[tuple[str, float, float, float]],
) -> dict[str, list[float]]:
    """Where a real worker's time goes, per session, from the probe's notes
    (same clock as the client's): the client's enqueue call, its delivery to
    the worker's child, each task's body (start to publishing its successor;
    the last one to SessionCompleted being seen committed), the publish, the
    task's return (Celery stores the result before `task_postrun`), and the
    hop from there to the next task's start (the child tells the prefork
    parent, which acks, sends task events and only then, prefetch 1 with late
    acks, takes the next message from Redis and pipes it to the child)."""
    notes: dict[str, list[tuple[float, str]]] = {}
    for line in probe.read_text().splitlines():
        ts, kind, sid = line.split()
        notes.setdefault(sid, []).append((float(ts), kind))
    out: dict[str, list[float]] = {}

    def add(name: str, dt: float) -> None:
        out.setdefault(name, []).append(dt)

    for sid, sent, returned, seen in sessions:
        ev = sorted(notes.get(sid, ()))
        starts = [t for t, k in ev if k == "start"]
        ends = [t for t, k in ev if k == "end"]
        pubs = [t for t, k in ev if k == "publish"]
        pubd = [t for t, k in ev if k == "published"]
        n = len(starts)
        if not n or len(pubs) != n - 1 or len(pubd) != n - 1 or len(ends) < n - 1:
            add("sessions whose notes do not add up (left out)", 1.0)
            continue
        add("client: enqueue() (group, chain, publish)", returned - sent)
        add("delivery: enqueue() returned -> task 1 starts", starts[0] - returned)
        bodies = sum(pubs[i] - starts[i] for i in range(n - 1)) + (seen - starts[-1])
        add(
            f"task bodies: {n - 1} x start -> publish next, + last start -> SessionCompleted seen",
            bodies,
        )
        add(
            f"re-enqueue: {n - 1} x publish -> published",
            sum(pubd[i] - pubs[i] for i in range(n - 1)),
        )
        add(
            f"task return: {n - 1} x published -> task end (result stored)",
            sum(ends[i] - pubd[i] for i in range(n - 1)),
        )
        add(
            f"hops: {n - 1} x task end -> next task starts",
            sum(starts[i + 1] - ends[i] for i in range(n - 1)),
        )
        for i in range(n - 1):
            add(f"  task {i + 1} body (start -> publish next)", pubs[i] - starts[i])
        add(f"  task {n} body (start -> SessionCompleted seen)", seen - starts[-1])
    return out


def read_paths(store: Any, url: str, sid: str, n: int) -> dict[str, list[float]]:
    """One stream-tail read (nothing new after the last seq, as most of the
    agent's reads are) through the store (a pooled SQLAlchemy connection:
    pre-ping, BEGIN, SELECT, ROLLBACK) and the same SELECT on an autocommit
    connection (one round trip), alternating."""
    import psycopg

    last = store.last_seq(sid)
    sql = "SELECT position, body, hash FROM events WHERE stream_id = %s AND seq > %s ORDER BY seq"
    out: dict[str, list[float]] = {
        "store.raw_stream (its own connection)": [],
        "same SELECT, a separate autocommit connection": [],
    }
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
        for i in range(n + 10):
            t = now()
            store.raw_stream(sid, last)
            a = now()
            conn.execute(sql, (sid, last)).fetchall()
            b = now()
            if i >= 10:
                out["store.raw_stream (its own connection)"].append(a - t)
                out["same SELECT, a separate autocommit connection"].append(b - a)
    return out


# -- running it ---------------------------------------------------------------------------


def redis_db_in_use(url: str) -> int:
    """How many other clients are connected to the db of `url`."""
    import redis

    r = redis.Redis.from_url(url)
    db = r.connection_pool.connection_kwargs.get("db", 0)
    me = r.client_id()
    n = sum(1 for c in r.client_list() if int(c.get("db", -1)) == db and int(c["id"]) != me)
    r.close()
    return n


def _tasks_per_session(store: Any, sid: str) -> int:
    return len({e.causation_id for e in store.read_stream(sid) if e.causation_id})


def run(opts: Options) -> Result:
    from bench.dispatch import celery_worker, clean_env, flush_redis

    res = Result("agent")
    if not (pg_available() and redis_available(REDIS_URL)):
        res.notes.append("PostgreSQL or Redis unreachable: nothing measured")
        res.target("added p50 per tool call, 1 call/turn", f"< {TARGET_MS:.0f} ms", "-", None)
        res.print_targets()
        return res
    if redis_db_in_use(REDIS_URL):
        res.notes.append(
            f"another client is connected to {REDIS_URL}; set BENCH_AGENT_REDIS to a free db"
        )
        res.target("added p50 per tool call, 1 call/turn", f"< {TARGET_MS:.0f} ms", "-", None)
        res.print_targets()
        return res
    n, warm = (40, 10) if opts.quick else (100, 10)
    base = CACHE / "scratch" / "agent"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    ws = workspace(base)
    log = base / "workers.log"
    url = pg_recreate(DB)
    try:
        from events.store import open_store
        from orchestrator.config.settings import Settings
        from tasks.app import make_app

        store = open_store(url, upgrade=True)
        with store.engine.begin() as conn:
            conn.exec_driver_sql(TRIGGER)
        flush_redis(REDIS_URL)
        probe = base / "probe.log"
        ours_env = clean_env(
            ORCH_STATE_DIR=str(base / "state"),
            ORCH_STORE_URL=url,
            ORCH_BROKER_URL=REDIS_URL,
            ORCH_RESULT_BACKEND=REDIS_URL,
            ORCH_LOG_LEVEL="WARNING",
            BENCH_AGENT_PROBE=str(probe),
        )
        bare_env = clean_env(
            BENCH_BARE_BROKER=REDIS_URL, BENCH_BARE_BACKEND=REDIS_URL, BENCH_AGENT_PG=url
        )
        app = make_app(
            Settings(
                state_dir=base / "state",
                store_url=url,
                broker_url=REDIS_URL,
                result_backend=REDIS_URL,
            )
        )
        waiter = Waiter(url)
        ours, direct, chain = Ours(store, app, waiter, base), Direct(ws), BareChain(waiter)
        bodies = InProcess(url, base)
        samples: dict[str, list[float]] = {}
        with (
            celery_worker("bench.agent:probed", "orchestrator", ours_env, log),
            celery_worker("bench.agent:bare", QUEUE_BARE, bare_env, log),
        ):
            for calls in (1, 5):  # warm-up, and the requests the peer replays
                for _ in range(warm):
                    ours(calls)
                direct.learn(store, calls, ours.last[calls])
            tasks = {k: _tasks_per_session(store, ours.last[k]) for k in (1, 5)}
            for k in (1, 5):
                for _ in range(warm):
                    direct(k)
                    chain(tasks[k])
                    bodies(k)
            bodies.measuring = True
            ours.enqueue_s.clear()
            ours.walls = {1: [], 5: []}
            fns: list[tuple[str, Callable[[], float]]] = []
            for k in (1, 5):
                fns += [
                    (f"{k}: ours", lambda k=k: ours(k)),
                    (f"{k}: direct", lambda k=k: direct(k)),
                    (f"{k}: bare", lambda k=k: chain(tasks[k])),
                    (f"{k}: bodies", lambda k=k: bodies(k)),
                ]
            for r in range(n):  # alternate who goes first
                for name, fn in fns if r % 2 == 0 else list(reversed(fns)):
                    samples.setdefault(name, []).append(fn())
        waiter.close()
        enqueue_ms = median(ours.enqueue_s) * 1e3
        lines = {k: timeline(probe, ours.walls[k]) for k in (1, 5)}
        reads = read_paths(store, url, ours.last[1], 200)
        profile = bodies.profile(1, 20) if opts.verbose else ""
        bodies.close()
        store.close()
        with contextlib.suppress(Exception):
            app.close()
            chain.client.close()
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.copy(log, CACHE / "agent-workers.log")
            print(f"the workers' log is kept in {CACHE / 'agent-workers.log'}")
        raise
    finally:
        pg_drop(DB)
        with contextlib.suppress(Exception):
            flush_redis(REDIS_URL)
        shutil.rmtree(base, ignore_errors=True)
    report(res, n, warm, samples, tasks, enqueue_ms, lines, bodies, profile, reads)
    return res


def report(
    res: Result,
    n: int,
    warm: int,
    samples: dict[str, list[float]],
    tasks: dict[int, int],
    enqueue_ms: float,
    lines: dict[int, dict[str, list[float]]],
    bodies: InProcess,
    profile: str,
    reads: dict[str, list[float]],
) -> None:
    ms = lambda v: [s * 1e3 for s in v]  # noqa: E731
    rows, figs = [], {}
    for k in (1, 5):
        o, d = ms(samples[f"{k}: ours"]), ms(samples[f"{k}: direct"])
        b, w = ms(samples[f"{k}: bare"]), ms(samples[f"{k}: bodies"])
        added = [a - c for a, c in zip(o, d)]
        rest = [a - c for a, c in zip(o, w)]
        f: dict[str, Any] = {
            "calls": k,
            "tasks_per_session": tasks[k],
            "sessions": n,
            "ours_p50_ms": median(o),
            "ours_p99_ms": pct(o, 99),
            "direct_p50_ms": median(d),
            "direct_p99_ms": pct(d, 99),
            "bare_chain_p50_ms": median(b),
            "bare_chain_p99_ms": pct(b, 99),
            "bodies_p50_ms": median(w),
            "bodies_p99_ms": pct(w, 99),
            "rest_p50_ms": median(rest),
            "ratio_p50": median(o) / median(d),
            "added_p50_ms": median(added),
            "added_p99_ms": pct(added, 99),
            "added_per_call_p50_ms": median(added) / k,
            "added_per_call_p99_ms": pct(added, 99) / k,
        }
        figs[k] = f
        rows += [
            (
                f"{k} call/turn: ours, Celery worker ({tasks[k]} tasks)",
                median(o),
                pct(o, 99),
                x(f["ratio_p50"]),
                "",
                "",
            ),
            (f"{k} call/turn: direct, one process", median(d), pct(d, 99), "1.00x", "", ""),
            (
                f"{k} call/turn: added (ours - direct, per round)",
                f["added_p50_ms"],
                f["added_p99_ms"],
                "",
                f["added_per_call_p50_ms"],
                f["added_per_call_p99_ms"],
            ),
            (
                f"{k} call/turn:   of which: our task bodies in process, no Celery",
                median(w),
                pct(w, 99),
                x(median(w) / median(d)),
                "",
                "",
            ),
            (
                f"{k} call/turn:   of which: the rest (ours - bodies, per round)",
                median(rest),
                pct(rest, 99),
                "",
                "",
                "",
            ),
            (
                f"{k} call/turn:   for the rest: bare Celery chain of {tasks[k]} no-op tasks",
                median(b),
                pct(b, 99),
                x(median(b) / median(d)),
                "",
                "",
            ),
        ]
    marginal = (figs[5]["added_p50_ms"] - figs[1]["added_p50_ms"]) / 4
    fixed = figs[1]["added_p50_ms"] - marginal
    show(
        f"[agent] one agent session, enqueue to SessionCompleted committed, ms ({n} rounds "
        f"after {warm} warm-up, interleaved; Redis broker, PostgreSQL store, prefork 1 child)",
        ("contender", "p50", "p99", "p50 / direct", "added/call p50", "added/call p99"),
        rows,
    )
    show(
        "[agent] added p50 split by the two scripts (5 calls - 1 call = 4 more tool-call tasks)",
        ("what", "ms"),
        [
            ("per extra tool call (marginal)", marginal),
            ("per session besides its tool calls (2 model turns, start, finish)", fixed),
            (
                "bare Celery hop, per task (chain p50 / tasks, 1-call script)",
                figs[1]["bare_chain_p50_ms"] / tasks[1],
            ),
            ("client: enqueue() call (in the figure)", enqueue_ms),
        ],
    )

    trow = []
    for k in (1, 5):
        for name, v in lines[k].items():
            trow.append((f"{k}: {name}", median(ms(v)), pct(ms(v), 99)))
        figs[k]["worker_timeline_p50_ms"] = {name: median(ms(v)) for name, v in lines[k].items()}
    show(
        "[agent] the real worker's timeline per session, from Celery signals in the worker "
        "(task start, publish, return), ms",
        ("script: segment", "p50", "p99"),
        trow,
    )

    prow, rrow = [], []
    for k in (1, 5):
        units, sess = bodies.units[k], bodies.sessions[k]
        whole = ms(bodies.whole[k])
        prow.append(
            (
                f"{k} call/turn: all {len(units[0])} task bodies, job report included",
                median(whole),
                pct(whole, 99),
                "",
            )
        )
        for i in range(len(units[0])):
            u = ms([us[i] for us in units])
            what = (
                "start + AgentStarted + model turn 1"
                if i == 0
                else "finish: SessionCompleted + job report"
                if i == len(units[0]) - 1
                else "model turn 2"
                if i == len(units[0]) - 2
                else f"tool call {i}"
            )
            prow.append((f"{k}:   task {i + 1}: {what}", median(u), pct(u, 99), ""))
        parts = bodies.parts[k]
        accounted = sum(parts.total.values())
        for name in sorted(parts.total, key=lambda m: -parts.total[m]):
            prow.append(
                (
                    f"{k}:   part: {name}",
                    parts.total[name] / sess * 1e3,
                    "",
                    f"{parts.count[name] / sess:.1f}",
                )
            )
        prow.append(
            (
                f"{k}:   part: everything else (loop, runner, pydantic, events)",
                (sum(bodies.whole[k]) - accounted) / sess * 1e3,
                "",
                "",
            )
        )
        rts = bodies.rts[k]
        n_rt = sum(rts.count.values()) + rts.begins
        for name in sorted(rts.total, key=lambda m: -rts.total[m]):
            rrow.append(
                (
                    f"{k}: {name}",
                    rts.count[name] / sess,
                    rts.total[name] / sess * 1e3,
                    rts.total[name] / rts.count[name] * 1e3,
                )
            )
        rrow.append((f"{k}: BEGIN (sent inside the reads above)", rts.begins / sess, "", ""))
        rrow.append(
            (f"{k}: all round trips", n_rt / sess, sum(rts.total.values()) / sess * 1e3, "")
        )
        figs[k]["in_process"] = {
            "whole_p50_ms": median(whole),
            "task_p50_ms": [median(ms([us[i] for us in units])) for i in range(len(units[0]))],
            "parts_ms_per_session": {m: parts.total[m] / sess * 1e3 for m in parts.total},
            "calls_per_session": {m: parts.count[m] / sess for m in parts.count},
            "pg_round_trips_per_session": n_rt / sess,
            "pg_ms_per_session": {m: rts.total[m] / sess * 1e3 for m in rts.total},
            "pg_count_per_session": {m: rts.count[m] / sess for m in rts.count},
        }
    show(
        "[agent] in process: the task bodies without Celery (AgentLoop.advance), same store, "
        "ms per session (parts exclusive)",
        ("what", "p50", "p99", "calls/session"),
        prow,
    )
    show(
        "[agent] in process: PostgreSQL round trips per session, by kind",
        ("script: kind", "per session", "ms per session", "ms each"),
        rrow,
    )
    show(
        "[agent] one stream-tail read, two ways (200 each, alternating), ms",
        ("path", "p50", "p99"),
        [(k, median(ms(v)), pct(ms(v), 99)) for k, v in reads.items()],
    )
    res.figures["read_ms_p50"] = {k: median(ms(v)) for k, v in reads.items()}
    if profile:
        print(profile)

    res.figures.update(
        {
            "1_call": figs[1],
            "5_calls": figs[5],
            "marginal_per_call_ms": marginal,
            "fixed_per_session_ms": fixed,
            "enqueue_ms": enqueue_ms,
        }
    )
    for k in (1, 5):
        v = figs[k]["added_per_call_p50_ms"]
        res.target(
            f"added p50 per tool call, {k} call/turn (added / calls)",
            f"< {TARGET_MS:.0f} ms",
            f"{v:.1f} ms",
            v < TARGET_MS,
        )
    res.target(
        "marginal cost of one more tool call (p50)",
        f"< {TARGET_MS:.0f} ms",
        f"{marginal:.1f} ms",
        marginal < TARGET_MS,
    )
    res.print_targets()

"""The HTTP API's cost: each call through a real uvicorn (`orchestrator api`)
against the same work done in-process, on PostgreSQL + Redis (db 8).

- submit: `POST /jobs` with a one-target, one-step spec (parse, targets,
  JobSubmitted, enqueue), against `parse_spec` + `jobs.prepare` +
  `jobs.record` + `tasks.dispatch.enqueue` called here (the CLI's `_submit`
  without the process start). No worker runs: jobs are only enqueued, and
  the Redis db is flushed at the end.
- status: `GET /jobs/{id}` against `watch.final_view` + `session_summary`.
- SSE: the delay from an append to the event reaching a client following
  the session (`?follow=true`), at the default `api_sse_poll_s` (0.2 s).

The two sides of each pair alternate round by round (`bench.common.rounds`).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from bench.common import (
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

REDIS = "redis://127.0.0.1:6379/8"
TOKEN = "bench-api-token-0123456789"
SPEC = {"name": "bench", "targets": ["repo"], "steps": [{"kind": "search", "pattern": "x"}]}


def _server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    import httpx

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli.main",
            "api",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the API did not start")


def run(opts: Options) -> Result:
    import httpx
    import redis
    from celery import Celery

    from events.envelope import NewEvent
    from events.payloads import TurnStarted
    from events.store import open_store
    from orchestrator.run import jobs
    from orchestrator.run.jobspec import parse_spec
    from orchestrator.run.watch import final_view, session_summary
    from tasks.dispatch import enqueue
    from tests.api_helpers import free_port

    res = Result("api")
    if not (pg_available() and redis_available(REDIS)):
        res.notes.append("needs PostgreSQL and Redis: not measured")
        return res
    n = 50 if opts.quick else 200
    sse_n = 10 if opts.quick else 30
    db = "orch_bench_api"
    url = pg_recreate(db)
    open_store(url, upgrade=True).close()
    with scratch_dir("api") as d:
        (d / "ws" / "repo").mkdir(parents=True)
        (d / "ws" / "repo" / "a.py").write_text("x = 1\n")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env.update(
            ORCH_STATE_DIR=str(d / "state"),
            ORCH_STORE_URL=url,
            ORCH_BROKER_URL=REDIS,
            ORCH_API_WORKSPACE_ROOT=str(d / "ws"),
            ORCH_API_TOKENS=json.dumps(
                [
                    {
                        "principal": "bench",
                        "roles": ["admin"],
                        "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                    }
                ]
            ),
        )
        proc = _server(env, port)
        store = open_store(url)
        broker = Celery("bench-api", broker=REDIS, backend=REDIS)
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        jobs_seen: list[str] = []
        try:

            def api_submit(_: int) -> float:
                t = now()
                r = client.post("/jobs", json=SPEC)
                took = now() - t
                assert r.status_code == 201, r.text
                jobs_seen.append(r.json()["job_id"])
                return took

            def local_submit(_: int) -> float:
                t = now()
                spec = parse_spec(json.dumps(SPEC))
                job_id, tickets = jobs.prepare(spec, d / "ws")
                jobs.record(store, spec, job_id, tickets, "user:bench")
                enqueue(tickets, spec.steps, app=broker, sign=False)
                return now() - t

            def api_status(r: int) -> float:
                t = now()
                assert client.get(f"/jobs/{jobs_seen[r % len(jobs_seen)]}").status_code == 200
                return now() - t

            def local_status(r: int) -> float:
                t = now()
                session_summary(final_view(store, jobs_seen[r % len(jobs_seen)]))
                return now() - t

            for fn in (api_submit, local_submit):  # warm-up
                for i in range(10):
                    fn(i)
            submit = rounds(
                {"POST /jobs (uvicorn)": api_submit, "in-process submit": local_submit}, n
            )
            status = rounds(
                {"GET /jobs/{id} (uvicorn)": api_status, "in-process status": local_status}, n
            )
            sse = _sse_delays(client, store, jobs_seen[0], sse_n, NewEvent, TurnStarted)
        finally:
            client.close()
            store.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            redis.Redis.from_url(REDIS).flushdb()
            pg_drop(db)
    rows = []
    for pair in (submit, status):
        (a, sa), (b, sb) = pair.items()
        rows += [
            (a, median(sa) * 1e3, pct(sa, 99) * 1e3, x(median(sa) / median(sb))),
            (b, median(sb) * 1e3, pct(sb, 99) * 1e3, "1.00x"),
        ]
        res.figures[a] = {"p50_ms": median(sa) * 1e3, "p99_ms": pct(sa, 99) * 1e3}
        res.figures[b] = {"p50_ms": median(sb) * 1e3, "p99_ms": pct(sb, 99) * 1e3}
    rows.append(("SSE: append -> client (poll 0.2 s)", median(sse) * 1e3, pct(sse, 99) * 1e3, ""))
    res.figures["sse_delay"] = {
        "p50_ms": median(sse) * 1e3,
        "p99_ms": pct(sse, 99) * 1e3,
        "poll_s": 0.2,
    }
    show(
        f"[api] PostgreSQL store, Redis broker; {n} rounds, ms",
        ("what", "p50", "p99", "vs in-process"),
        rows,
    )
    return res


def _sse_delays(
    client: Any, store: Any, job_id: str, count: int, NewEvent: Any, TurnStarted: Any
) -> list[float]:
    """Follow a session of `job_id` and append `count` events to it, one at a
    time; each delay is from the append's return to the client's read."""
    from orchestrator.run.runner import job_state

    sid = job_state(store, job_id).sessions[0].session_id
    got: dict[int, float] = {}
    ready = threading.Event()

    def follow() -> None:
        with client.stream("GET", f"/sessions/{sid}/events", params={"follow": "true"}) as s:
            ready.set()
            for line in s.iter_lines():
                if line.startswith("id: "):
                    got[int(line[4:])] = now()
                    if len(got) >= count:
                        return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    ready.wait(10)
    sent: dict[int, float] = {}
    for i in range(count):
        [e] = store.append(
            sid,
            [
                NewEvent.create(
                    TurnStarted(turn=i + 1, name="b", kind="b"),
                    actor="bench",
                    correlation_id=job_id,
                )
            ],
            i,
        )
        sent[e.seq] = now()
        deadline = time.monotonic() + 5
        while e.seq not in got and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)
    reader.join(5)
    return [got[s] - t for s, t in sent.items() if s in got]

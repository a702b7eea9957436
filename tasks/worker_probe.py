"""The worker's heartbeat and its HTTP probes (docs/operations.md).

On `worker_ready` the worker's main process starts a daemon thread that
every `worker_heartbeat_interval_s` checks the event store (one cheap query
with short timeouts) and the broker (the same check `doctor` runs), and
publishes a `heartbeat.Beat` with the store's verdict. `orchestrator health`
and the API's `/readyz` read those beats; a worker that stops withdraws its
beat, so readiness flips at once instead of after `worker_heartbeat_max_age_s`.

With `worker_probe_port` set, the main process also serves:

- `/healthz`: the process answers and its heartbeat thread is alive and
  not stuck (its last round ended less than two intervals plus the
  checks' timeouts ago): a liveness probe;
- `/readyz`: the last store and broker checks passed (503 and which failed
  otherwise): a readiness probe;
- `/metrics`: `orchestrator.ops.metrics.exposition()` for Prometheus.

Only the main process does this: pool processes fork from it before
`worker_ready`, and the probes speak for the whole worker.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from celery import signals
from celery.utils.log import get_logger
from celery.worker import state as worker_state

from orchestrator.config.settings import Settings, get_settings
from orchestrator.ops import heartbeat, storage

__all__ = ["Probe", "check_store", "check_broker", "serve"]

log = get_logger(__name__)
STORE_TIMEOUT_S = 3  # connect and statement timeout of the store check
Verdict = tuple[bool, str]  # (ok, why not)


def check_store(settings: Settings) -> Verdict:
    """One `SELECT` on the events table with short timeouts, on a connection
    of its own (the tasks' pool is in the pool processes, not here)."""
    import sqlalchemy as sa

    from events.db import display_url, normalize_url, store_errors
    from events.errors import EventError

    if settings.embedded_store and not (settings.state / "events.sqlite").exists():
        return True, "embedded store not created yet (the first job creates it)"
    url = normalize_url(settings.effective_store_url)
    full = storage.write_problem(url)
    if full is not None:
        log.error("event store cannot take appends: %s", full)
        return False, f"{full}: appends fail; free space (or remount read-write)"
    if url.startswith("postgresql"):
        args: dict[str, Any] = {
            "connect_timeout": STORE_TIMEOUT_S,
            "options": f"-c statement_timeout={STORE_TIMEOUT_S * 1000}",
        }
    else:
        args = {"timeout": STORE_TIMEOUT_S}
    engine = sa.create_engine(url, connect_args=args, poolclass=sa.pool.NullPool)
    try:
        with store_errors(url), engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1 FROM events LIMIT 1").all()
        return True, ""
    except EventError as exc:
        return False, str(exc)
    except sa.exc.SQLAlchemyError as exc:  # e.g. no events table: not migrated
        cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return False, (f"event store {display_url(url)}: {cause}; run `orchestrator db upgrade`")
    finally:
        engine.dispose()


def check_broker(settings: Settings) -> Verdict:
    from orchestrator.ops import doctor

    result = doctor.check_broker(settings)
    return result.status != "fail", "" if result.status != "fail" else result.detail


@dataclass
class Probe:
    """The heartbeat loop and the state the probes answer from. The checks
    are arguments so a test can run a round without a worker."""

    settings: Settings
    hostname: str
    queues: tuple[str, ...] = ()
    store_check: Callable[[Settings], Verdict] = check_store
    broker_check: Callable[[Settings], Verdict] = check_broker
    clock: Callable[[], float] = time.time
    active: Callable[[], tuple[str, ...]] = lambda: running_sessions()
    store: Verdict = (False, "not checked yet")
    broker: Verdict = (False, "not checked yet")
    last_round: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)
    _fresh: set[str] = field(default_factory=set)  # sessions received since the last beat
    _published: frozenset[str] = frozenset()  # the sessions the last in-flight record lists
    _thread: threading.Thread | None = None

    def round(self, check: bool = True) -> heartbeat.Beat:
        """Check the store and the broker once and publish the beat, with the
        sessions in flight; `check` False (a nudge): only the in-flight record,
        the checks' last verdicts in it."""
        if check:
            self.store = _guarded(self.store_check, self.settings)
            self.broker = _guarded(self.broker_check, self.settings)
        self._published = frozenset()  # a nudge meanwhile wakes the next round
        fresh, self._fresh = self._fresh, set()
        beat = heartbeat.Beat(
            hostname=self.hostname,
            pid=os.getpid(),
            at=self.clock(),
            store_ok=self.store[0],
            broker_ok=self.broker[0],
            detail="; ".join(v[1] for v in (self.store, self.broker) if not v[0]),
            queues=self.queues,
            active=tuple(dict.fromkeys((*self.active(), *sorted(fresh)))),
        )
        try:
            heartbeat.publish(self.settings, beat, inflight_only=not check)
            self._published = frozenset(beat.active)
        except OSError as exc:  # a full or read-only state folder
            log.error("cannot write the heartbeat file: %s", exc)
        self.last_round = self.clock()
        return beat

    def start(self) -> None:
        self.round()  # the first beat before the worker takes tasks
        self._thread = threading.Thread(
            target=self._loop, name="orchestrator-heartbeat", daemon=True
        )
        self._thread.start()

    def nudge(self, sessions: tuple[str, ...] = ()) -> None:
        """A task arrived: publish the in-flight record now, not at the next
        beat, so a worker that dies in the first seconds of a step is reaped
        too (without this, a kill within one interval of the step's start
        left a record that named no session)."""
        self._fresh.update(sessions)
        # A session the published record lists already (its previous step
        # arrived here since the last beat) needs no new one. `round` empties
        # `_published` before it takes `_fresh`, so a session added after
        # that is either in this round's record or wakes the next.
        if not self._published.issuperset(sessions):
            self._wake.set()

    def _loop(self) -> None:
        every = self.settings.worker_heartbeat_interval_s
        next_check = time.monotonic() + every
        while not self._stop.is_set():
            nudged = self._wake.wait(max(0.0, next_check - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                break
            due = time.monotonic() >= next_check
            try:
                self.round(check=due or not nudged)
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one round
                log.exception("heartbeat round failed: %s", exc)
            if due or not nudged:
                next_check = time.monotonic() + every

    def stop(self) -> None:
        """Stop beating and withdraw the beat: this worker takes no more work."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * STORE_TIMEOUT_S + 1)
        heartbeat.withdraw(self.settings, self.hostname)

    # -- the probes' answers (status code, JSON body) --------------------------

    def healthz(self) -> tuple[int, dict[str, Any]]:
        alive = self._thread is not None and self._thread.is_alive()
        # A round may hang in a check for up to its timeouts; past that it is stuck.
        limit = 2 * self.settings.worker_heartbeat_interval_s + 4 * STORE_TIMEOUT_S
        age = None if self.last_round is None else self.clock() - self.last_round
        ok = alive and age is not None and age <= limit
        body: dict[str, Any] = {
            "ok": ok,
            "worker": self.hostname,
            "pid": os.getpid(),
            "heartbeat_thread": alive,
            "last_round_age_s": None if age is None else round(age, 3),
        }
        if not ok:
            body["detail"] = (
                "the heartbeat thread is not running"
                if not alive
                else f"the heartbeat thread has not finished a round for {age:.0f} s"
            )
        return (200 if ok else 503), body

    def readyz(self) -> tuple[int, dict[str, Any]]:
        checks = {"store": self.store, "broker": self.broker}
        failed = [name for name, (ok, _) in checks.items() if not ok]
        body = {
            "ok": not failed,
            "worker": self.hostname,
            "failed": failed,
            "checks": [{"name": n, "ok": ok, "detail": d} for n, (ok, d) in checks.items()],
        }
        return (503 if failed else 200), body


def running_sessions() -> tuple[str, ...]:
    """ "JOB_ID/SESSION_ID" of the sessions this worker's tasks run now (the
    main process tracks every accepted request), for the in-flight record."""
    found: dict[str, None] = {}
    # Reserved: received and not yet done (prefetched or running): a worker
    # that dies holds all of them unacknowledged.
    for request in list(worker_state.reserved_requests):
        found.update(dict.fromkeys(sessions_of(request.args)))
    return tuple(found)


def sessions_of(args: Any) -> tuple[str, ...]:
    """ "JOB_ID/SESSION_ID" of the tickets a step task's arguments carry."""
    first = args[0] if args else None
    return tuple(
        f"{t['job_id']}/{t['session_id']}"
        for t in (first if isinstance(first, list) else [first])
        if isinstance(t, dict) and "job_id" in t and "session_id" in t
    )


def _guarded(check: Callable[[Settings], Verdict], settings: Settings) -> Verdict:
    try:
        return check(settings)
    except Exception as exc:  # noqa: BLE001 - a check that crashes says "not ok"
        return False, f"{type(exc).__name__}: {exc}"


def metrics(settings: Settings) -> tuple[int, bytes, str]:
    """(status, body, content type) of `/metrics`."""
    try:
        from orchestrator.ops.metrics import exposition
    except ImportError as exc:
        return (
            501,
            (f"metrics are not available in this installation: {exc}\n").encode(),
            "text/plain; charset=utf-8",
        )
    body, content_type = exposition(settings)
    return 200, body, content_type


def serve(probe: Probe, address: str, port: int) -> ThreadingHTTPServer:
    """The probe endpoint on a daemon thread; `server.shutdown()` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                status, body, ctype = metrics(probe.settings)
                self._send(status, body, ctype)
                return
            answer = {"/healthz": probe.healthz, "/readyz": probe.readyz}.get(path)
            if answer is None:
                self._send(
                    404, b'{"error": "try /healthz, /readyz or /metrics"}\n', "application/json"
                )
                return
            status, data = answer()
            self._send(status, json.dumps(data).encode() + b"\n", "application/json")

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # probes every few seconds: no log line
            pass

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="orchestrator-probe", daemon=True).start()
    return server


# -- the worker's signals --------------------------------------------------------

_running: dict[str, Any] = {}


@signals.worker_ready.connect
def _start(sender: Any, **_: Any) -> None:
    if "probe" in _running:  # the consumer restarted (a broker came back)
        return
    settings = get_settings()
    consumer = getattr(sender, "task_consumer", None)
    queues = tuple(sorted(q.name for q in getattr(consumer, "queues", None) or ()))
    probe = Probe(settings, hostname=sender.hostname, queues=queues)
    probe.start()
    _running["probe"] = probe
    if settings.worker_probe_port is not None:
        try:
            _running["server"] = serve(
                probe, settings.worker_probe_address, settings.worker_probe_port
            )
            log.info(
                "worker probes on http://%s:%s/healthz, /readyz, /metrics",
                settings.worker_probe_address,
                settings.worker_probe_port,
            )
        except OSError as exc:  # the port is taken: beat on, without the endpoint
            log.error(
                "cannot serve the worker probes on port %s: %s; set "
                "ORCH_WORKER_PROBE_PORT to a free port",
                settings.worker_probe_port,
                exc,
            )


@signals.task_received.connect
def _received(request: Any = None, **_: Any) -> None:
    probe = _running.get("probe")
    if probe is not None and request is not None:
        probe.nudge(sessions_of(getattr(request, "args", None)))


@signals.worker_shutdown.connect
def _stop(**_: Any) -> None:
    server = _running.pop("server", None)
    if server is not None:
        server.shutdown()
        server.server_close()
    probe = _running.pop("probe", None)
    if probe is not None:
        probe.stop()

"""Metrics: one small facade the code calls, fanned out to the configured reporters.

    metrics.tool_call("read", "ok", 0.004)
    metrics.model_tokens("gpt-4o-mini", "input", 812)

Reporters (`metrics_reporters`): `prometheus` (prometheus-client; scraped
through `exposition()`), `otlp` (the OpenTelemetry SDK pushing to
`otlp_endpoint` + /v1/metrics) and `stdout` (JSON lines every
`metrics_interval_s`). Until `setup` runs, or with none configured, every
facade call returns after one tuple check.

Prefork: Celery's children are separate processes, so prometheus-client runs
in multiprocess mode. `PROMETHEUS_MULTIPROC_DIR` must be in the environment
before prometheus_client is first imported: `orchestrator.ops.workers` puts it
(`metrics_dir`) in the worker's environment, `tasks.observe` sets it on
`celeryd_init` for workers started by hand, and this module imports
prometheus_client only inside `setup`/`exposition`. Each child writes its
own files; `exposition()` aggregates the folder; a child that exits is
marked dead (`mark_dead`, on `worker_process_shutdown`) so its gauges stop
counting while its counters and histograms keep their totals.

Gauges computed at scrape time (confirmations waiting, queue depth) are
read from the store and the broker by `exposition()` itself: no process has
to keep them current.
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import orjson

from orchestrator import lazy
from orchestrator.ops.logs import get_logger

__all__ = [
    "METRICS",
    "SCRAPED",
    "setup",
    "shutdown",
    "exposition",
    "tool_call",
    "tool_error",
    "model_call",
    "model_tokens",
    "permission",
    "quota_denied",
    "events_appended",
    "circuit_changed",
    "browser_pool",
    "prepare_dir",
    "mark_dead",
]

Kind = Literal["counter", "histogram", "gauge"]
# Tool calls run from a millisecond (read) to minutes (a test suite).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    900,
)
APPEND_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    unit: str = ""


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "orch_tool_call_seconds",
            "histogram",
            "Tool call latency by tool and outcome "
            "(ok; error: it ran and exited non-zero; failed: it raised a tool error)",
            ("tool", "outcome"),
            unit="s",
        ),
        Metric(
            "orch_tool_errors_total",
            "counter",
            "Failed tool calls by tool and error kind "
            "(the ToolCallFailed error, e.g. Timeout, PolicyRefused)",
            ("tool", "kind"),
        ),
        Metric(
            "orch_model_call_seconds",
            "histogram",
            "Model call latency, retries included, by model and outcome (ok, error)",
            ("model", "outcome"),
            unit="s",
        ),
        Metric(
            "orch_model_tokens_total",
            "counter",
            "Model tokens by model and direction (input, output, cached)",
            ("model", "direction"),
        ),
        Metric(
            "orch_permission_decisions_total",
            "counter",
            "Policy decisions on tool requests "
            "by decision (allow, ask, deny) and the rule that decided",
            ("decision", "rule"),
        ),
        Metric(
            "orch_quota_denials_total",
            "counter",
            "Tool requests refused by a quota or a rate limit, by tool and rule",
            ("tool", "rule"),
        ),
        Metric(
            "orch_events_appended_total",
            "counter",
            "Events appended to the store (an idempotent hit appends none)",
        ),
        Metric(
            "orch_event_append_seconds",
            "histogram",
            "Latency of one store append (one transaction, any number of events)",
            buckets=APPEND_BUCKETS,
            unit="s",
        ),
        Metric(
            "orch_circuit_transitions_total",
            "counter",
            "Circuit breaker transitions by "
            "destination host and the state entered (open, half_open, closed)",
            ("host", "state"),
        ),
        Metric(
            "orch_browser_pool",
            "gauge",
            "Browser instances by state (idle, busy, starting), "
            "summed over the live worker processes",
            ("state",),
        ),
    )
}
# Computed by `exposition()` when scraped, not recorded by any process.
SCRAPED: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "orch_confirmations_waiting",
            "gauge",
            "Tool calls waiting for an operator's answer (the store's confirmation index)",
        ),
        Metric("orch_queue_depth", "gauge", "Messages waiting in the broker, by queue", ("queue",)),
        Metric(
            "orch_jobs_stalled",
            "gauge",
            "Running jobs with no progress for stall_after_s and no answer awaited "
            "(`orchestrator resume JOB`)",
        ),
    )
}
QUEUES = ("orchestrator",)


class Reporter(Protocol):
    def record(self, metric: Metric, labels: tuple[str, ...], value: float) -> None: ...
    def shutdown(self) -> None: ...


_reporters: tuple[Reporter, ...] = ()
_pid: int | None = None


def _record(name: str, labels: tuple[str, ...], value: float) -> None:
    m = METRICS[name]
    for r in _reporters:
        r.record(m, labels, value)


# -- the facade --------------------------------------------------------------------


def tool_call(tool: str, outcome: str, seconds: float) -> None:
    if _reporters:
        _record("orch_tool_call_seconds", (tool, outcome), seconds)


def tool_error(tool: str, kind: str) -> None:
    if _reporters:
        _record("orch_tool_errors_total", (tool, kind), 1)


def model_call(model: str, outcome: str, seconds: float) -> None:
    if _reporters:
        _record("orch_model_call_seconds", (model, outcome), seconds)


def model_tokens(model: str, direction: str, n: int) -> None:
    if _reporters and n:
        _record("orch_model_tokens_total", (model, direction), n)


def permission(decision: str, rule: str) -> None:
    if _reporters:
        _record("orch_permission_decisions_total", (decision, rule), 1)


def quota_denied(tool: str, rule: str) -> None:
    if _reporters:
        _record("orch_quota_denials_total", (tool, rule), 1)


def events_appended(n: int, seconds: float) -> None:
    if _reporters:
        if n:
            _record("orch_events_appended_total", (), n)
        _record("orch_event_append_seconds", (), seconds)


def circuit_changed(host: str, state: str) -> None:
    """A breaker for `host` entered `state` (the worker that saw it records it)."""
    if _reporters:
        _record("orch_circuit_transitions_total", (host, state), 1)


def browser_pool(state: str, n: int) -> None:
    """How many of this process's browser instances are in `state` now."""
    if _reporters:
        _record("orch_browser_pool", (state,), n)


class MetricsObserver:
    """The `Observer` (orchestrator.ops.observer) that records into this
    process's reporters: what composition roots pass to the runner, the
    agent loop and the web tools."""

    def tool_call(self, tool: str, outcome: str, seconds: float, error: str | None = None) -> None:
        tool_call(tool, outcome, seconds)
        if error is not None:
            tool_error(tool, error)

    def permission(self, decision: str, rule: str) -> None:
        permission(decision, rule)

    def quota_denied(self, tool: str, rule: str) -> None:
        quota_denied(tool, rule)

    def model_call(self, model: str, outcome: str, seconds: float) -> None:
        model_call(model, outcome, seconds)

    def model_tokens(self, model: str, direction: str, n: int) -> None:
        model_tokens(model, direction, n)

    def circuit_changed(self, host: str, state: str) -> None:
        circuit_changed(host, state)

    def browser_pool(self, state: str, n: int) -> None:
        browser_pool(state, n)


OBSERVER = MetricsObserver()


# -- set up --------------------------------------------------------------------------


def setup(settings: Any, *, stream: IO[str] | None = None) -> None:
    """The reporters `settings.metrics_reporters` names, for this process
    (again after a fork), and the store's append hook."""
    global _reporters, _pid
    if _pid == os.getpid():
        return
    made: list[Reporter] = []
    for kind in dict.fromkeys(settings.metrics_reporters):
        if kind == "prometheus":
            made.append(PrometheusReporter())
        elif kind == "otlp":
            made.append(OtlpReporter(settings))
        elif kind == "stdout":
            made.append(StdoutReporter(settings.metrics_interval_s, stream))
    _reporters, _pid = tuple(made), os.getpid()
    hooks = lazy.module("events.appending").APPEND_HOOKS  # pydantic: not for --help
    if made and _on_append not in hooks:
        hooks.append(_on_append)


def _on_append(stream_id: str, n: int, seconds: float) -> None:
    events_appended(n, seconds)


def shutdown() -> None:
    """Push what the push reporters hold (a process's last act)."""
    global _reporters, _pid
    for r in _reporters:
        try:
            r.shutdown()
        except Exception:  # the collector went away; the process ends anyway
            pass
    _reporters, _pid = (), None


def prepare_dir(path: Path) -> Path:
    """The multiprocess folder, made, with files of processes that no longer
    run removed (a previous worker's; other live workers' stay)."""
    path.mkdir(parents=True, exist_ok=True)
    for f in path.glob("*.db"):
        pid = f.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            f.unlink(missing_ok=True)
    return path


def share_dir(settings: Any) -> None:
    """Make this process read (and write) the workers' multiprocess folder of
    the same configuration (`metrics_dir`, default state_dir/metrics), so the
    API's /metrics shows the workers of its state folder with no variable to
    set. Before prometheus_client is imported, and only when nothing chose a
    folder already (PROMETHEUS_MULTIPROC_DIR wins: prometheus-client's own)."""
    if "prometheus" not in settings.metrics_reporters or "prometheus_client" in sys.modules:
        return
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        path = settings.effective_metrics_dir
        path.mkdir(parents=True, exist_ok=True)  # a reader prunes nothing: workers do
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_dead(pid: int) -> None:
    """A prefork child ended: its live gauges stop counting."""
    path = _multiproc_dir()
    if path and "prometheus_client" in sys.modules:
        lazy.module("prometheus_client.multiprocess").mark_process_dead(pid, path)


def _multiproc_dir() -> str | None:
    # prometheus-client's own variable (workers.py sets it from metrics_dir);
    # read here because the library reads it, not as configuration.
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return path if path and os.path.isdir(path) else None


# -- exposition ------------------------------------------------------------------------


def exposition(settings: Any) -> tuple[bytes, str]:
    """The Prometheus text of this process's metrics, or, in multiprocess mode,
    of every process writing PROMETHEUS_MULTIPROC_DIR; plus the scrape-time
    gauges, read from the store and broker `settings` name. (body, content
    type) for GET /metrics and the worker's probe."""
    pc = lazy.module("prometheus_client")  # after PROMETHEUS_MULTIPROC_DIR is set
    registry = pc.CollectorRegistry(auto_describe=False)
    path = _multiproc_dir()
    if path:
        lazy.module("prometheus_client.multiprocess").MultiProcessCollector(registry, path=path)
    else:
        own = next((r for r in _reporters if isinstance(r, PrometheusReporter)), None)
        if own is not None:
            registry.register(_Forward(own.registry))
    registry.register(_Scraped(settings))
    return pc.generate_latest(registry), pc.CONTENT_TYPE_LATEST


class _Forward:
    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def collect(self) -> Any:
        return self.registry.collect()


class _Scraped:
    """Confirmations waiting and queue depth, read when scraped. A store or
    broker that cannot be read leaves its gauge out (the scrape still works)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def collect(self) -> Any:
        GaugeMetricFamily = lazy.module("prometheus_client.core").GaugeMetricFamily  # noqa: N806
        settings = self.settings
        m = SCRAPED["orch_confirmations_waiting"]
        waiting = _try(lambda: confirmations_waiting(settings))
        if waiting is not None:
            yield GaugeMetricFamily(m.name, m.help, value=waiting)
        m = SCRAPED["orch_jobs_stalled"]
        stalled = _try(lambda: len(jobs_stalled(settings)))
        if stalled is not None:
            yield GaugeMetricFamily(m.name, m.help, value=stalled)
        m = SCRAPED["orch_queue_depth"]
        depths = _try(lambda: queue_depths(settings))
        if depths is not None:
            g = GaugeMetricFamily(m.name, m.help, labels=m.labels)
            for queue, n in depths.items():
                g.add_metric([queue], n)
            yield g


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:
        get_logger(__name__).debug("scrape-time metric unavailable", error=str(exc))
        return None


_store: tuple[str, Any] | None = None


def confirmations_waiting(settings: Any) -> int | None:
    """Unanswered ConfirmationRequested events (the confirmation-type index)."""
    global _store
    confirmations = lazy.module("orchestrator.run.confirmations")
    url = settings.effective_store_url
    if settings.embedded_store and not (settings.state / "events.sqlite").exists():
        return 0
    if _store is None or _store[0] != url:
        _store = (url, lazy.module("events.store").SqlEventStore(url))
    found = _store[1].read_types(confirmations.CONFIRMATION_TYPES)
    return len(confirmations.unanswered(found))


_stalled: dict[str, tuple[float, list[Any]]] = {}
STALLED_EVERY_S = 30.0  # a stall takes minutes; scrapes and probes come every few seconds


def jobs_stalled(settings: Any) -> list[Any]:
    """The stalled jobs (orchestrator.service.resume), from the same store;
    computed at most every STALLED_EVERY_S (it replays each running job)."""
    global _store
    url = settings.effective_store_url
    if settings.embedded_store and not (settings.state / "events.sqlite").exists():
        return []
    cached = _stalled.get(url)
    if cached is not None and time.monotonic() - cached[0] < STALLED_EVERY_S:
        return cached[1]
    if _store is None or _store[0] != url:
        _store = (url, lazy.module("events.store").SqlEventStore(url))
    resume = lazy.module("orchestrator.service.resume")
    now = lazy.module("events.envelope").utcnow()
    found: list[Any] = resume.find_stalled(_store[1], now, settings.stall_after_s)
    _stalled[url] = (time.monotonic(), found)
    return found


def queue_depths(settings: Any) -> dict[str, int]:
    """Messages waiting per queue: LLEN of the queue's list on Redis, visible
    rows of kombu's message table on the embedded broker."""
    url = settings.effective_broker_url
    if url.startswith(("redis://", "rediss://")):
        client = lazy.module("redis").Redis.from_url(url, socket_timeout=2)
        try:
            return {q: int(client.llen(q)) for q in QUEUES}
        finally:
            client.close()
    if settings.embedded_broker:
        db = settings.state / "broker.sqlite"
        if not db.exists():
            return {q: 0 for q in QUEUES}
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = dict(
                conn.execute(
                    "SELECT q.name, count(m.id) FROM kombu_queue q LEFT JOIN kombu_message m "
                    "ON m.queue_id = q.id AND m.visible GROUP BY q.name"
                ).fetchall()
            )
        except sqlite3.OperationalError:  # no table yet: nothing was ever sent
            rows = {}
        finally:
            conn.close()
        return {q: int(rows.get(q, 0)) for q in QUEUES}
    return {}


# -- reporters ---------------------------------------------------------------------------


class PrometheusReporter:
    """prometheus-client metrics on an own registry (multiprocess files when
    PROMETHEUS_MULTIPROC_DIR was set before the first import)."""

    def __init__(self) -> None:
        pc = lazy.module("prometheus_client")  # after PROMETHEUS_MULTIPROC_DIR is set
        self.registry = pc.CollectorRegistry(auto_describe=True)
        self._m: dict[str, Any] = {}
        for m in METRICS.values():
            if m.kind == "counter":
                self._m[m.name] = pc.Counter(
                    m.name.removesuffix("_total"), m.help, m.labels, registry=self.registry
                )
            elif m.kind == "histogram":
                self._m[m.name] = pc.Histogram(
                    m.name, m.help, m.labels, buckets=m.buckets, registry=self.registry
                )
            else:
                self._m[m.name] = pc.Gauge(
                    m.name, m.help, m.labels, registry=self.registry, multiprocess_mode="livesum"
                )

    def record(self, metric: Metric, labels: tuple[str, ...], value: float) -> None:
        found = self._m[metric.name]
        child = found.labels(*labels) if labels else found
        if metric.kind == "counter":
            child.inc(value)
        elif metric.kind == "histogram":
            child.observe(value)
        else:
            child.set(value)

    def shutdown(self) -> None:
        pass


class OtlpReporter:
    """OpenTelemetry SDK instruments pushed to `otlp_endpoint` every interval."""

    def __init__(self, settings: Any) -> None:
        exporter = lazy.module("opentelemetry.exporter.otlp.proto.http.metric_exporter")
        sdk = lazy.module("opentelemetry.sdk.metrics")
        export = lazy.module("opentelemetry.sdk.metrics.export")
        resources = lazy.module("opentelemetry.sdk.resources")
        endpoint = (settings.otlp_endpoint or "http://127.0.0.1:4318").rstrip("/")
        reader = export.PeriodicExportingMetricReader(
            exporter.OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"),
            export_interval_millis=settings.metrics_interval_s * 1000,
        )
        self.provider = sdk.MeterProvider(
            metric_readers=[reader],
            resource=resources.Resource.create(
                {"service.name": settings.otel_service_name, "process.pid": os.getpid()}
            ),
        )
        meter = self.provider.get_meter("orchestrator")
        self._m: dict[str, Any] = {}
        for m in METRICS.values():
            if m.kind == "counter":
                self._m[m.name] = meter.create_counter(m.name, unit=m.unit, description=m.help)
            elif m.kind == "histogram":
                self._m[m.name] = meter.create_histogram(
                    m.name,
                    unit=m.unit,
                    description=m.help,
                    explicit_bucket_boundaries_advisory=list(m.buckets),
                )
            else:
                self._m[m.name] = meter.create_gauge(m.name, unit=m.unit, description=m.help)

    def record(self, metric: Metric, labels: tuple[str, ...], value: float) -> None:
        attrs = dict(zip(metric.labels, labels))
        inst = self._m[metric.name]
        if metric.kind == "counter":
            inst.add(value, attrs)
        elif metric.kind == "histogram":
            inst.record(value, attrs)
        else:
            inst.set(value, attrs)

    def shutdown(self) -> None:
        self.provider.shutdown()


class StdoutReporter:
    """Totals since the process started, one JSON line per series, every
    `interval_s` and when the process ends:

        {"ts": "...", "pid": 41, "metric": "orch_tool_call_seconds", "kind": "histogram",
         "labels": {"tool": "read", "outcome": "ok"}, "count": 3, "sum": 0.012}
    """

    def __init__(self, interval_s: float, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.__stdout__ or sys.stdout
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._series: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-stdout", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    def record(self, metric: Metric, labels: tuple[str, ...], value: float) -> None:
        key = (metric.name, labels)
        with self._lock:
            s = self._series.get(key)
            if s is None:
                s = self._series[key] = [0.0, 0.0]
            if metric.kind == "histogram":
                s[0] += 1
                s[1] += value
            elif metric.kind == "counter":
                s[1] += value
            else:
                s[1] = value

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def lines(self) -> list[bytes]:
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._lock:
            series = sorted(self._series.items())
        out = []
        for (name, labels), (count, total) in series:
            m = METRICS[name]
            row: dict[str, Any] = {
                "ts": ts,
                "pid": os.getpid(),
                "metric": name,
                "kind": m.kind,
                "labels": dict(zip(m.labels, labels)),
            }
            if m.kind == "histogram":
                row.update(count=int(count), sum=round(total, 6))
            else:
                row["value"] = total
            out.append(orjson.dumps(row))
        return out

    def flush(self) -> None:
        lines = self.lines()
        if lines:
            try:
                self.stream.write(b"\n".join(lines).decode() + "\n")
                self.stream.flush()
            except (ValueError, OSError):  # stdout closed at exit
                pass

    def shutdown(self) -> None:
        self._stop.set()
        self.flush()
        atexit.unregister(self.flush)

"""Traces: a job run through the CLI and a real worker with the OTLP exporter
sends its spans to a (real, local) OTLP/HTTP receiver: the Celery task spans
and the tool-call spans share one trace, and that trace id is the one the
worker's log lines and the ToolCallStarted events carry."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from events.store import SqlEventStore
from orchestrator.run.sample_repos import create_sample_repos
from tests.cli_helpers import ROOT, cli, shape_env
from tests.test_logs import lines

EXAMPLE = ROOT / "orchestrator" / "examples" / "rename-function.yaml"

pytestmark = pytest.mark.slow


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP collector that keeps what it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[dict] = []
        self.metric_names: set[str] = set()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server: Receiver = self.server  # type: ignore[assignment]
        if self.path == "/v1/traces":
            req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            got = [
                {
                    "name": s.name,
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "attributes": {
                        a.key: a.value.string_value or a.value.int_value for a in s.attributes
                    },
                }
                for rs in req.resource_spans
                for ss in rs.scope_spans
                for s in ss.spans
            ]
            with server.lock:
                server.spans += got
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        else:
            req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
            with server.lock:
                server.metric_names |= {
                    m.name
                    for rm in req.resource_metrics
                    for sm in rm.scope_metrics
                    for m in sm.metrics
                }
            reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver():
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_task_and_tool_spans_share_the_trace_the_logs_and_events_name(
    tmp_path: Path, receiver: Receiver
):
    create_sample_repos(tmp_path / "sample-repos", count=1)
    env = shape_env(
        tmp_path,
        ORCH_LOG_FORMAT="json",
        ORCH_TRACE_EXPORTER="otlp",
        ORCH_OTLP_ENDPOINT=receiver.url,
        ORCH_METRICS_REPORTERS='["otlp"]',
        ORCH_METRICS_INTERVAL_S="1",
    )
    result = cli(env, "run", str(EXAMPLE), "--base-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    session_id = job["sessions"][0]["session_id"]

    # The worker stopped when the run ended: its children flushed their spans.
    by_name: dict[str, list[dict]] = {}
    for s in receiver.spans:
        by_name.setdefault(s["name"], []).append(s)
    tools = by_name.get("tool replace", [])
    assert len(tools) == 1, sorted(by_name)
    tool = tools[0]
    assert tool["attributes"]["orchestrator.tool_call_id"] == f"{session_id}/1"
    runs = [s for s in receiver.spans if s["name"].startswith("run/orchestrator.run_step")]
    assert len(runs) == 3
    submit = by_name["orchestrator.submit"][0]
    assert submit["attributes"]["orchestrator.job_id"] == job["job_id"]
    # One trace: from the CLI's submit through every link of the chain.
    assert {s["trace_id"] for s in runs} == {tool["trace_id"]} == {submit["trace_id"]}

    worker = lines((tmp_path / "state" / "worker.log").read_text())
    call_lines = [x for x in worker if x["event"] == "tool call" and x["tool"] == "replace"]
    assert [x["trace_id"] for x in call_lines] == [tool["trace_id"]]
    assert call_lines[0]["span_id"] in {s["span_id"] for s in runs}

    store = SqlEventStore(f"sqlite:///{tmp_path / 'state' / 'events.sqlite'}")
    started = [e.payload for e in store.read_stream(session_id) if e.type == "ToolCallStarted"]
    assert [pl.trace_id for pl in started] == [tool["trace_id"]] * 3
    store.close()
    # The OTLP metrics reporter pushed the same calls.
    assert {"orch_tool_call_seconds", "orch_events_appended_total"} <= receiver.metric_names

"""Traces: an OpenTelemetry tracer provider from configuration, and spans.

`trace_exporter` picks where spans go: `otlp` (OTLP/HTTP protobuf to
`otlp_endpoint` + /v1/traces, batched), `console` (printed to stderr, for
debugging: stdout is the command's output, `--json` holds only JSON) or
`none` (no provider, and `span` costs one attribute read).
`setup(settings, celery=True)` also instruments Celery
(`opentelemetry-instrumentation-celery`): a publish span in whoever sends a
task, the trace context in the message headers, and a run span in the worker
that every span of the task body nests under. So a job submitted by the CLI
is one trace: submit, each task, each model call and each tool call.

Under the prefork pool the provider is made in each child after the fork
(`tasks.observe`, on `worker_process_init`): an exporter's thread does not
survive a fork. `shutdown` flushes what is batched when a process ends.

The active trace id goes into every log line (`orchestrator.ops.logs`) and into
the ToolCallStarted and ModelRequested events (`current_trace_id`), so an
auditor can go from an event to its trace and an operator from a trace to
its lines.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["setup", "span", "current_ids", "current_trace_id", "shutdown", "active"]

_tracer: Any = None  # None: tracing is off in this process
_provider: Any = None
_pid: int | None = None
_celery_instrumented = False


def active() -> bool:
    return _tracer is not None


def setup(settings: Any, *, celery: bool = False) -> None:
    """A tracer provider for this process as `settings` says (nothing for
    `trace_exporter = none`); `celery=True` instruments Celery too."""
    global _tracer, _provider, _pid, _celery_instrumented
    if settings.trace_exporter == "none":
        return
    if _provider is not None and _pid == os.getpid():
        return
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": settings.otel_service_name, "process.pid": os.getpid()}
        )
    )
    if settings.trace_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = (settings.otlp_endpoint or "http://127.0.0.1:4318").rstrip("/")
        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"), schedule_delay_millis=1000
            )
        )
    else:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    # The global provider can be set once per process; a forked child has its
    # parent's, whose exporter thread did not survive: replace it outright.
    trace._TRACER_PROVIDER_SET_ONCE._done = False  # type: ignore[attr-defined]
    trace.set_tracer_provider(provider)
    _provider, _pid = provider, os.getpid()
    _tracer = provider.get_tracer("orchestrator")
    if celery and not _celery_instrumented:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument(tracer_provider=provider)
        _celery_instrumented = True


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span around a unit of work (a tool call, a model call), a child of
    the active one; None attributes are left out. A no-op when tracing is off."""
    if _tracer is None:
        yield None
        return
    attrs = {k: v for k, v in attributes.items() if v is not None}
    with _tracer.start_as_current_span(name, attributes=attrs) as s:
        yield s


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the active span as hex, or None."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def current_trace_id() -> str | None:
    ids = current_ids()
    return ids[0] if ids else None


def shutdown() -> None:
    """Export what is batched and stop (a process's last act)."""
    global _tracer, _provider
    if _provider is not None and _pid == os.getpid():
        _provider.shutdown()
    _tracer = _provider = None

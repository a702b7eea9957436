"""Structured logs: one structlog setup per process, correlation ids on every line.

`configure` runs once in the CLI (`orchestrator.cli.main.main`), in a worker's
main process and again in each prefork child (`tasks.observe` on Celery's
`setup_logging` and `worker_process_init`). Standard-library records
(celery, kombu, sqlalchemy) go through the same processors via structlog's
`ProcessorFormatter`, so every line of a process has one shape: JSON, one
object a line, when the output is not a terminal; aligned and coloured for
people when it is (`log_format`).

Correlation ids live in structlog's contextvars: `bind(job_id=...)` where
the code knows one, `bound(...)` for a unit of work (the previous values come
back when it ends). `tasks.observe` carries them across processes in a
message header, from whoever publishes a task to the worker that runs it.
While a span is active, `trace_id` and `span_id` join them.

Every string a line holds passes `orchestrator.guard.masking.mask` with the secret
values this process knows (`orchestrator.config.secrets.known_values()`, when that
module exists) last, after exceptions are formatted, so neither a message,
a field nor a traceback writes a secret down.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from orchestrator.guard.masking import mask

__all__ = [
    "CORRELATION_IDS",
    "configure",
    "get_logger",
    "bind",
    "bound",
    "clear",
    "correlation_ids",
]

# The ids a line carries when the context has them (DESIGN.md, Conventions).
CORRELATION_IDS = ("job_id", "session_id", "turn_id", "tool_call_id", "task_id")

_configured: tuple[int, str] | None = None  # (pid, what) of the last configure


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; `log.info("tool call", tool="read", outcome="ok")`."""
    return structlog.stdlib.get_logger(name)


def bind(**ids: Any) -> None:
    """Bind correlation ids (None values are skipped) for the rest of this context."""
    structlog.contextvars.bind_contextvars(**{k: str(v) for k, v in ids.items() if v is not None})


@contextmanager
def bound(**ids: Any) -> Iterator[None]:
    """Ids bound for a unit of work; what was bound before comes back after."""
    with structlog.contextvars.bound_contextvars(
        **{k: str(v) for k, v in ids.items() if v is not None}
    ):
        yield


def clear() -> None:
    structlog.contextvars.clear_contextvars()


def correlation_ids() -> dict[str, str]:
    """The correlation ids bound in this context (what a task message carries)."""
    ctx = structlog.contextvars.get_contextvars()
    return {k: ctx[k] for k in CORRELATION_IDS if ctx.get(k) is not None}


# -- processors ------------------------------------------------------------------


def add_trace_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """trace_id and span_id of the active span (hex, as OTLP backends show them).
    Nothing to do, and nothing imported, while tracing is not set up."""
    tracing = sys.modules.get("orchestrator.ops.tracing")
    if tracing is not None:
        ids = tracing.current_ids()
        if ids is not None:
            event.setdefault("trace_id", ids[0])
            event.setdefault("span_id", ids[1])
    return event


_known: Callable[[], Any] | None = None
_known_loaded = False


def known_secrets() -> tuple[str, ...]:
    """The secret values this process knows. `orchestrator.config.secrets` is imported
    on first use (it imports settings); without it, none."""
    global _known, _known_loaded
    if not _known_loaded:
        _known_loaded = True
        try:
            from orchestrator.config import secrets as secrets_mod  # type: ignore[attr-defined]

            _known = getattr(secrets_mod, "known_values", None)
        except ImportError:
            _known = None
    if _known is None:
        return ()
    try:
        return tuple(_known())
    except Exception:  # a log line must never fail because a secret store did
        return ()


def _masked(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return mask(value, secrets)
    if isinstance(value, dict):
        return {k: _masked(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v, secrets) for v in value]
    return value


def mask_secrets(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Every string of the line (nested ones too) with secrets masked."""
    secrets = known_secrets()
    return {k: _masked(v, secrets) for k, v in event.items()}


def _json(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _pre_chain() -> list[Processor]:
    """What every record goes through, structlog's and the standard library's."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
    ]


def formatter(fmt: str, colors: bool = True) -> logging.Formatter:
    """The ProcessorFormatter rendering both kinds of record: `fmt` is json or
    console (`colors`: ANSI colours, for a terminal)."""
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=_json)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_pre_chain(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            mask_secrets,
            renderer,
        ],
    )


def configure(
    settings: Any = None,
    *,
    logfile: str | Path | None = None,
    level: str | int | None = None,
    stream: IO[str] | None = None,
    force: bool = False,
    human: bool = False,
) -> None:
    """Set up structlog and the root logger for this process.

    Lines go to `logfile` (appended, as Celery's `--logfile`) or else to
    `stream` (stderr). `level` overrides `settings.log_level`. `human`: the
    stream is read by a person (the CLI's stderr, beside its own messages),
    so `log_format = auto` renders console lines there even when it is not a
    terminal (a JSON line in the middle of a command's output helps nobody;
    `log_format = json` still asks for JSON). Called again
    in the same process with the same target it does nothing, unless
    `force` (a prefork child re-opens its file after the fork)."""
    global _configured
    target = str(logfile) if logfile else "stream"
    if not force and _configured == (os.getpid(), target):
        return
    if settings is None:
        from orchestrator.config.settings import Settings

        settings = Settings.model_construct()  # defaults: a bad config still logs
    fmt = settings.log_format
    tty = False
    if logfile:
        handler: logging.Handler = logging.handlers.WatchedFileHandler(logfile, encoding="utf-8")
        fmt = "json" if fmt == "auto" else fmt
    else:
        out = stream or sys.stderr
        handler = logging.StreamHandler(out)
        tty = getattr(out, "isatty", lambda: False)()
        if fmt == "auto":
            fmt = "console" if tty or human else "json"
    handler.setFormatter(formatter(fmt, colors=tty))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if force or isinstance(old, logging.handlers.WatchedFileHandler):
            old.close()
    root.addHandler(handler)
    lvl = level if level is not None else settings.log_level
    root.setLevel(lvl if isinstance(lvl, int) else logging.getLevelName(str(lvl).upper()))
    # Migrations narrate every run at INFO; a person running a job wants none of it.
    logging.getLogger("alembic").setLevel(
        logging.WARNING if root.level > logging.DEBUG else logging.NOTSET
    )
    _configured = (os.getpid(), target)


def _route_to_stdlib() -> None:
    """structlog hands every line to the standard library, whose root handler
    (`configure`) renders it. Done on import, so a process that never calls
    `configure` (a test, a benchmark) prints nothing below WARNING instead of
    structlog's default of printing everything to stdout."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_pre_chain(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


_route_to_stdlib()


def ids_from(mapping: Mapping[str, Any] | None) -> dict[str, str]:
    """The correlation ids found in a mapping (a message header, a ticket)."""
    if not mapping:
        return {}
    return {k: str(mapping[k]) for k in CORRELATION_IDS if mapping.get(k)}

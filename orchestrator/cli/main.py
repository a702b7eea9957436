"""The `orchestrator` command line.

The entry point: `main()` maps typed errors to exit codes, the callback
builds the command's composition root (`cli.root`: settings, store,
dispatcher), and each command group (`cli.jobs`, `cli.audit`, ...) registers
its commands here. Exit codes: 0 ok, 1 job failed, 2 bad input or config, 3 denied by policy,
4 infrastructure unavailable.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import click
import typer

import orchestrator
from events.errors import EventError
from orchestrator import lazy
from orchestrator.cli import api as cli_api
from orchestrator.cli import audit as cli_audit
from orchestrator.cli import chat as cli_chat
from orchestrator.cli import config as cli_config
from orchestrator.cli import confirm as cli_confirm
from orchestrator.cli import diagnose as cli_diagnose
from orchestrator.cli import jobs as cli_jobs
from orchestrator.cli import ops as cli_ops
from orchestrator.cli import sandbox as cli_sandbox
from orchestrator.cli.common import err, masked, out
from orchestrator.cli.root import begin
from orchestrator.config.settings import Settings, get_settings
from orchestrator.errors import OrchestratorError

# Loaded in the commands that use them, not for `--help` (bench/cli_startup.py).
_exceptions = lazy.module("kombu.exceptions")
logs = lazy.module("orchestrator.ops.logs")
tracing = lazy.module("orchestrator.ops.tracing")

app = typer.Typer(
    rich_markup_mode="markdown",
    help=__doc__.split("\n\n")[0]
    + (
        " Submit batch refactor jobs to a Celery queue, watch them, and replay or verify "
        "their hash-chained audit log."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"orchestrator {orchestrator.__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _global_options(
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        dir_okay=False,
        help="A TOML configuration file (the same as "
        "ORCH_CONFIG; environment and .env still win); docs/configuration.md",
    ),
    version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        callback=_print_version,
        help="Print the installed version and exit.",
    ),
) -> None:
    if config is not None:
        os.environ["ORCH_CONFIG"] = str(config.expanduser().absolute())
        get_settings.cache_clear()
    begin()


# Each command group registers its commands, in the order `--help` lists them.
for group in (
    cli_jobs,
    cli_sandbox,
    cli_confirm,
    cli_audit,
    cli_chat,
    cli_diagnose,
    cli_api,
    cli_config,
    cli_ops,
):
    group.register(app)


def main() -> None:
    """Entry point: typed errors become their exit codes with their message."""
    try:
        _observe()
        # Without standalone mode click returns an Exit's code instead of exiting.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # a usage error: a missing argument, a bad value
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            err.print(f"[bold red]error:[/] {masked(exc)}", highlight=False)
        sys.exit(getattr(exc, "exit_code", 2))
    except (OrchestratorError, EventError) as exc:
        err.print(f"[bold red]error:[/] {masked(exc)}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print(
            "interrupted; a submitted job keeps running on the workers "
            "(see `orchestrator status JOB_ID`)"
        )
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        if _is_unreachable(exc):
            err.print(
                f"[bold red]error:[/] broker unavailable: {masked(exc)}. Check "
                "ORCH_BROKER_URL "
                "and that the broker is running.",
                highlight=False,
            )
            sys.exit(4)

        sys.stderr.write(masked("".join(traceback.format_exception(exc))))
        sys.exit(1)


def _observe() -> None:
    """Logs (and traces, when configured) for this process; a bad configuration
    still gets default logging, and the command reports the problem itself."""
    try:
        s: Settings | None = get_settings()
    except OrchestratorError:
        s = None
    _LogsOnFirstRecord.install(s)
    if s is not None:
        tracing.setup(s, celery=True)


class _LogsOnFirstRecord(logging.Handler):
    """Holds the root logger's place until a record arrives, then sets up
    `orchestrator.ops.logs` and hands the record to it: structlog (and the
    rich tracebacks it loads, a tenth of `status`'s start-up) is paid only by
    a command that logs. The levels are set now, as `logs.configure` sets them,
    so the same records get through."""

    def __init__(self, settings: Settings | None) -> None:
        super().__init__()
        self.settings = settings

    @classmethod
    def install(cls, settings: Settings | None) -> None:
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(cls(settings))
        level = (settings or Settings.model_construct()).log_level
        root.setLevel(logging.getLevelName(level))
        # As logs.configure: Alembic narrates every migration at INFO.
        logging.getLogger("alembic").setLevel(
            logging.WARNING if root.level > logging.DEBUG else logging.NOTSET
        )

    def emit(self, record: logging.LogRecord) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        # Console lines for people (opsviews): JSON only with ORCH_LOG_FORMAT=json.
        logs.configure(self.settings, human=True)  # replaces the root's handlers
        for handler in root.handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def _is_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, (_exceptions.OperationalError, ConnectionError, OSError))


if __name__ == "__main__":
    main()

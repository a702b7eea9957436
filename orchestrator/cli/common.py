"""What the command groups share: the consoles, failing with an exit code,
JSON output, and the job workflows every group runs the same way (submit,
wait for the verdict, print the summary).

Each command group imports this module, never `main` (which imports the
groups to register them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
import typer
from rich.console import Console

from orchestrator import lazy
from orchestrator.cli.root import current

# Heavy parts (SQLAlchemy, Alembic, the runner, the payload models) load in
# the commands that use them, not for `--help` (bench/cli_startup.py).
render = lazy.module("orchestrator.cli.render")


if TYPE_CHECKING:
    from events.store import EventStore
    from orchestrator.run.jobspec import JobSpec
    from orchestrator.run.runner import Ticket

# Loaded by the commands that use them, not by `--help` (bench/cli_startup.py).
_policy = lazy.module("orchestrator.guard.policy")
_jobspec = lazy.module("orchestrator.run.jobspec")
_workflows = lazy.module("orchestrator.service.workflows")
_watch = lazy.module("orchestrator.run.watch")
_secrets = lazy.module("orchestrator.config.secrets")
_masking = lazy.module("orchestrator.guard.masking")
_logs = lazy.module("orchestrator.ops.logs")
_tracing = lazy.module("orchestrator.ops.tracing")

# Output piped to a file or a program is not cut to 80 columns: tables take
# the width their content needs (a script reads whole lines) and rules are a
# short plain line. COLUMNS, when set, still decides.
PIPED_WIDTH = 10_000


class PipedConsole(Console):
    """stdout when it is not a terminal: wide, and plain rules."""

    def rule(self, title: Any = "", **_: Any) -> None:  # type: ignore[override]
        self.print(f"-- {title} --" if title else "--", markup=False, highlight=False)


def stdout_console(stderr: bool = False) -> Console:
    """The console for a command's output, or its errors with `stderr` (see
    PIPED_WIDTH): a message read by a script or a log is never cut in lines."""
    console = Console(stderr=stderr)
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return PipedConsole(width=PIPED_WIDTH, stderr=stderr)


out = stdout_console()
err = stdout_console(stderr=True)

JSON_OPT = typer.Option(
    False, "--json", help="Print the result as one JSON document (for scripts), not as tables"
)
POLICY_OPT = typer.Option(
    None,
    "--policy",
    exists=True,
    dir_okay=False,
    help="A policy YAML (docs/security.md) combined with the job's own; the strictest setting wins",
)
TIER_OPT = typer.Option(
    None,
    "--tier",
    help="read-only | read-write | exec: the highest tier "
    "this job gets (the strictest of this, the job's and the config's)",
)
ELEVATE_OPT = typer.Option(
    False,
    "--allow-destructive",
    help="Let destructive operations (rm, mv, git reset --hard, ...) run "
    "without confirmation; recorded with your identity",
)


def masked(text: object) -> str:
    """Text for the terminal: every known secret and credential shape masked."""
    return _masking.mask(str(text), _secrets.known_values())  # type: ignore[no-any-return]


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {masked(message)}", highlight=False)
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def submit_job(
    spec_path: Path,
    base_dir: Path | None,
    policy_file: Path | None = None,
    tier: str | None = None,
    allow_destructive: bool = False,
    store_ready: Callable[[], object] | None = None,
) -> tuple[EventStore, str, JobSpec, list[Ticket]]:
    """`submit`, `run` and `smoke`: load the spec, then the application's
    submit (prepare, record, enqueue) with this command's settings.
    `store_ready` is called once the store is open (and migrated, when
    embedded): `run` starts its worker there, so the worker boots while the
    job is recorded and enqueued rather than after."""
    spec = _jobspec.load_spec(spec_path)  # SpecError (exit 2) before anything else
    if tier is not None and tier not in _policy.TIERS:
        fail(f"--tier {tier!r} is not a tier; use one of {', '.join(_policy.TIERS)}", 2)
    root = current()
    s = root.settings
    docs = [_policy.load_policy(f).doc for f in (policy_file, s.policy_file) if f is not None]
    st = root.store(for_writing=True)
    if store_ready is not None:
        store_ready()
    base = (base_dir or Path.cwd()).resolve()
    job_id, tickets = _workflows.submit(
        st,
        root.dispatcher,
        spec,
        base,
        actor=s.submitter,
        policy_files=docs,
        tier=tier or s.tier,
        elevated_by=s.submitter if allow_destructive else None,
        scope=_submit_span,
    )
    _logs.get_logger("orchestrator.cli.main").info(
        "job submitted", name=spec.name, sessions=[t.session_id for t in tickets]
    )
    return st, job_id, spec, tickets


def _submit_span(job_id: str) -> AbstractContextManager[object]:
    """Logs carry the job id from here on; recording and enqueueing are one
    span, so the workers' spans join the submitter's trace."""
    _logs.bind(job_id=job_id)
    return _tracing.span("orchestrator.submit", **{"orchestrator.job_id": job_id})  # type: ignore[no-any-return]


def job_exit(st: EventStore, job_id: str) -> int:
    """0 completed; 3 when policy holds or refused what did not complete
    (confirmations waiting, refused sessions); else 1."""
    view = _watch.final_view(st, job_id)
    if view.job.outcome == "completed":
        return 0
    waiting = [c for s in view.sessions.values() if not s.finished for c in s.waiting]
    for c in waiting:
        err.print(
            f"[yellow]waiting for confirmation[/] {c.call_id}: {c.reason} (rule "
            f"{c.rule_id}); answer with `orchestrator approve {c.call_id}` or "
            f"`orchestrator deny {c.call_id} --reason ...`",
            highlight=False,
        )
    errors = [s.error or "" for s in view.sessions.values() if s.status == "failed"]
    if any(not e.startswith("PolicyRefused") for e in errors):
        return 1
    return 3 if waiting or errors else 1


def finish(st: EventStore, job_id: str, out_dir: Path | None, as_json: bool) -> None:
    """The job's summary (or JSON), and its patches written to `out_dir`."""
    view = _watch.final_view(st, job_id)
    rows = _watch.session_summary(view)
    if out_dir is not None:
        written = render.write_patches(out_dir, rows)
        if not as_json:
            err.print(f"wrote {len(written)} patch file(s) to {out_dir}")
    counts = _watch.counts(rows)
    if as_json:
        emit_json(
            {
                "job_id": job_id,
                "name": view.job.name,
                "status": view.job.outcome,
                "counts": counts,
                "sessions": rows,
            }
        )
    else:
        render.summary(out, view, rows)
        out.print(_watch.counts_line(counts), highlight=False, markup=False)

"""Jobs: `submit`, `run`, `status`, `worker` and `demo`."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import typer

from orchestrator import lazy
from orchestrator.cli.common import (
    ELEVATE_OPT,
    JSON_OPT,
    POLICY_OPT,
    TIER_OPT,
    emit_json,
    err,
    fail,
    finish,
    job_exit,
    out,
    submit_job,
)
from orchestrator.cli.root import current
from orchestrator.ops import workers

# Heavy parts (SQLAlchemy, Alembic, the runner, the payload models) load in
# the commands that use them, not for `--help` (bench/cli_startup.py).
_audit = lazy.module("events.audit")
_db = lazy.module("events.db")
_urls = lazy.module("events.urls")
_history = lazy.module("events.history")
_store = lazy.module("events.store")
_quickread = lazy.module("events.quickread")
_envelope = lazy.module("events.envelope")
_protect = lazy.module("orchestrator.audit.protect")
_storage = lazy.module("orchestrator.ops.storage")
render = lazy.module("orchestrator.cli.render")
_sample_repos = lazy.module("orchestrator.run.sample_repos")
_watch = lazy.module("orchestrator.run.watch")
_stalls = lazy.module("orchestrator.service.stalls")


def submit(
    spec: Path = typer.Argument(..., help="Job spec (YAML)", exists=True, dir_okay=False),
    base_dir: Optional[Path] = typer.Option(
        None, help="Resolve relative targets against this folder (default: cwd)"
    ),
    json: bool = typer.Option(False, "--json", help="Print {job_id, sessions} as JSON"),
    policy: Optional[Path] = POLICY_OPT,
    tier: Optional[str] = TIER_OPT,
    allow_destructive: bool = ELEVATE_OPT,
) -> None:
    """Enqueue a job and print its id; workers (`orchestrator worker`) run it."""
    _, job_id, _, tickets = submit_job(spec, base_dir, policy, tier, allow_destructive)
    if json:
        emit_json({"job_id": job_id, "sessions": [t.model_dump() for t in tickets]})
    else:
        out.print(job_id)


def run(
    spec: Path = typer.Argument(..., help="Job spec (YAML)", exists=True, dir_okay=False),
    base_dir: Optional[Path] = typer.Option(
        None, help="Resolve relative targets against this folder (default: cwd)"
    ),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write one .patch per target"),
    json: bool = typer.Option(False, "--json", help="Print a machine-readable result"),
    keep_worker: bool = typer.Option(False, help="Leave a worker started here running"),
    timeout: Optional[float] = typer.Option(None, help="Give up waiting after N seconds"),
    policy: Optional[Path] = POLICY_OPT,
    tier: Optional[str] = TIER_OPT,
    allow_destructive: bool = ELEVATE_OPT,
) -> None:
    """Submit a job, start a worker if none runs, show live progress, then the
    summary and one unified diff per target."""
    with _submit_and_follow(
        spec,
        base_dir,
        policy,
        tier,
        allow_destructive,
        quiet=json,
        timeout=timeout,
        keep_worker=keep_worker,
    ) as (st, job_id, _, _):
        finish(st, job_id, out_dir, json)
    raise typer.Exit(job_exit(st, job_id))


@contextlib.contextmanager
def _submit_and_follow(
    spec: Path,
    base_dir: Path | None,
    policy: Path | None = None,
    tier: str | None = None,
    allow_destructive: bool = False,
    *,
    quiet: bool = False,
    timeout: float | None = None,
    keep_worker: bool = False,
) -> Iterator[tuple[Any, str, list[Any], Any]]:
    """Submit the job, with a worker started (if none runs) as soon as the
    store is ready, so that its boot (about 2 s) overlaps the recording and
    enqueueing; show the job's live progress until it ends, and stop a worker
    started here (unless kept). Yields the store, the job id, its tickets and
    its final view; a worker started here winds down while the caller prints
    (`workers.StartedWorker`) and is waited for on leaving."""
    worker = workers.StartedWorker(keep=keep_worker)

    def start() -> None:
        worker.proc = current().ensure_worker(err)

    with worker:
        st, job_id, job_spec, tickets = submit_job(
            spec, base_dir, policy, tier, allow_destructive, store_ready=start
        )
        view = render.follow(
            st,
            job_id,
            job_spec.name,
            len(job_spec.steps),
            {t.session_id: t.target for t in tickets},
            quiet=quiet,
            console=err,
            worker=worker.proc,
            timeout=timeout,
        )
        worker.wind_down()
        yield st, job_id, tickets, view


def status(
    job_id: str = typer.Argument(..., help="A job id from submit or run"),
    json: bool = JSON_OPT,
) -> None:
    """Where a job stands: each target's status, steps and files changed."""
    s = current().settings
    url = _urls.normalize_url(s.effective_store_url)
    view, last = _watch.view_of(job_id, *_job_rows(url, job_id))
    if not view.job.sessions:
        fail(
            f"no job {job_id} in the event store at {_db.display_url(url)}; check the id "
            "and ORCH_STORE_URL",
            2,
        )
    rows = _watch.session_summary(view)
    trouble = _stalls.trouble(
        view.job,
        view.sessions.values(),
        last,
        _envelope.utcnow(),
        s.stall_after_s,
        _storage.write_problem(url),
    )
    if json:
        emit_json(
            {
                "job_id": job_id,
                "name": view.job.name,
                "status": view.job.outcome,
                "cancel": {"by": view.job.cancelled_by, "reason": view.job.cancel_reason}
                if view.job.cancelled_by
                else None,
                "sessions": [{k: v for k, v in r.items() if k != "patch"} for r in rows],
                **trouble,
            }
        )
    else:
        render.summary(out, view, rows, diffs=False)
        for line in _stalls.trouble_lines(job_id, trouble):
            err.print(f"[bold yellow]warning:[/] {line}", highlight=False)


def _job_rows(url: str, job_id: str) -> tuple[list[tuple[int, bytes, str]], Any]:
    """Every row of the job and how to open them: read with the database's
    own driver (no SQLAlchemy: `status` starts as fast as `celery --help`),
    else through the store, which also says why the first could not."""
    read = _quickread.job_rows(url, job_id)
    if read is not None:
        keys = functools.partial(_quickread.StoredKeys, read.keys)
        return read.rows, read.loads(_protect.reveal(current().settings, keys))
    st = current().store()
    return list(st.raw_all(correlation_id=job_id)), st.loads


def worker(
    concurrency: Optional[int] = typer.Option(
        None, "-c", "--concurrency", help="Worker processes (default from config)"
    ),
) -> None:
    """Run a Celery worker on the project's app in the foreground (production shape)."""
    s = current().settings
    if s.embedded_store:
        _store.open_store(s.effective_store_url, upgrade=True).close()
    cmd = workers.worker_command(s, concurrency=concurrency, detach_files=False)
    os.execve(cmd[0], cmd, workers.worker_env(s))


def demo(
    directory: Path = typer.Option(
        Path("demo"), "--dir", help="Where to create the sample repositories"
    ),
    example: str = typer.Option("rename-function", help="Bundled example job to run"),
) -> None:
    """Create sample repositories, run a bundled example job on them through a real
    worker, and show the replay of one session and the verified audit log."""
    repos = _sample_repos.create_sample_repos(directory / "sample-repos")
    err.print(f"created {len(repos)} sample repositories under {directory / 'sample-repos'}")
    spec = Path(str(resources.files("orchestrator") / "examples" / f"{example}.yaml"))
    if not spec.exists():
        fail(f"no bundled example {example!r}; see orchestrator/examples/", 2)
    with _submit_and_follow(spec, directory) as (st, job_id, tickets, view):
        finish(st, job_id, directory / "patches", False)
        first = tickets[0].session_id
        out.rule(f"orchestrator audit replay {first}")
        render.replay(out, _history.history(st, first))
        report = _audit.verify_store(st)
        out.rule("orchestrator audit verify")
        render.verify(out, report)
    raise typer.Exit(0 if view.job.outcome == "completed" and report.ok else 1)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the main app."""
    app.command("submit")(submit)
    app.command("run")(run)
    app.command("status")(status)
    app.command("worker")(worker)
    app.command("demo")(demo)

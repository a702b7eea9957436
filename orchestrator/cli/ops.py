"""Operations commands (docs/operations.md): `health`, `worker-probe`, `flower`, `smoke`.

Exit codes: `health` 0 ready, 4 not ready; `worker-probe` 0 when this
machine's worker has a fresh heartbeat whose store check passed, else 1 (an
exec probe knows only zero and non-zero); `smoke` 0 all passed, 4
infrastructure down, 1 anything else; `flower` Flower's own.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import orjson
import typer
from rich.console import Console
from rich.table import Table

from orchestrator import lazy
from orchestrator.cli.common import JSON_OPT, err, submit_job
from orchestrator.cli.root import current
from orchestrator.config.settings import Settings
from orchestrator.ops import heartbeat

# Heavy parts (SQLAlchemy, Alembic, the runner, the payload models) load in
# the commands that use them, not for `--help` (bench/cli_startup.py).
render = lazy.module("orchestrator.cli.render")
doctor_mod = lazy.module("orchestrator.ops.doctor")
health_mod = lazy.module("orchestrator.ops.health")  # imports doctor (urllib.request)
sandbox = lazy.module("orchestrator.sandbox.runtime")
smoke_mod = lazy.module("orchestrator.ops.smoke")
workers = lazy.module("orchestrator.ops.workers")
_resume = lazy.module("orchestrator.service.resume")
_policy = lazy.module("orchestrator.guard.policy")


out = Console()


def register(app: typer.Typer) -> None:
    app.command("health")(health)
    app.command("worker-probe")(worker_probe)
    app.command(
        "flower", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
    )(flower)
    app.command("smoke")(smoke)
    app.command("doctor")(doctor)
    app.command("resume")(resume)


def _json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _table(title: str, rows: list[tuple[str, bool, str, str]]) -> None:
    table = Table(title=title)
    for col in ("check", "result", "detail", "what to do"):
        table.add_column(col, overflow="fold")
    for name, ok, detail, remedy in rows:
        table.add_row(
            name, "[green]ok[/]" if ok else "[bold red]FAIL[/]", detail, "" if ok else remedy
        )
    out.print(table)


# -- health ------------------------------------------------------------------------


def health(
    json: bool = typer.Option(
        False,
        "--json",
        help="Print the report as JSON ({ok, failed, checks: [{name, ok, detail, remedy}]})",
    ),
) -> None:
    """Readiness of the configured deployment: the broker and the store answer
    (at the schema this release needs) and a worker published a fresh
    heartbeat. Exit 0 ready, 4 not."""
    report = health_mod.readiness(current().settings)
    if json:
        _json(report.to_json())
    else:
        _table(
            "ready" if report.ok else "NOT ready",
            [(c.name, c.ok, c.detail, c.remedy) for c in report.checks],
        )
    raise typer.Exit(0 if report.ok else 4)


# -- worker-probe ----------------------------------------------------------------


def probe_verdict(
    beats: list[heartbeat.Beat], hostname: str | None, now: float, max_age_s: float
) -> tuple[bool, str]:
    """(ready, why) for an exec probe (pure)."""
    mine = [b for b in beats if hostname is None or b.hostname == hostname]
    if not mine:
        return False, (
            "no heartbeat file"
            + (f" for {hostname}" if hostname else "")
            + ": the worker is not running or has not started yet"
        )
    live = heartbeat.fresh(mine, now, max_age_s)
    if not live:
        age = min(now - b.at for b in mine)
        return False, f"the newest heartbeat is {age:.0f} s old (limit {max_age_s:g} s)"
    ready = [b for b in live if b.store_ok and b.broker_ok]
    if not ready:
        return False, "; ".join(
            f"{b.hostname}: {'store' if not b.store_ok else 'broker'} unreachable: {b.detail}"
            for b in live
        )
    return True, ", ".join(f"{b.hostname} (pid {b.pid}) beat {now - b.at:.1f} s ago" for b in ready)


def worker_probe(
    hostname: Optional[str] = typer.Option(
        None,
        "--hostname",
        help="This worker's node name (default: any worker of this state folder)",
    ),
    max_age: Optional[float] = typer.Option(
        None, "--max-age", help="Seconds (default worker_heartbeat_max_age_s)"
    ),
    json: bool = JSON_OPT,
) -> None:
    """For exec probes: exit 0 when this machine's worker published a fresh
    heartbeat and reached its store, 1 otherwise. Reads only the local
    heartbeat file (no broker, no database)."""
    s = current().settings
    ok, why = probe_verdict(
        heartbeat.read_files(s),
        hostname,
        time.time(),
        max_age if max_age is not None else s.worker_heartbeat_max_age_s,
    )
    if json:
        _json({"ok": ok, "detail": why, "folder": str(heartbeat.folder(s))})
    else:
        (out if ok else err).print(("ready: " if ok else "NOT ready: ") + why, highlight=False)
    raise typer.Exit(0 if ok else 1)


# -- flower ------------------------------------------------------------------------

FLOWER_COLUMNS = "name,uuid,state,args,result,received,runtime,worker"


def flower_command(
    settings: Settings,
    *,
    port: int | None = None,
    address: str | None = None,
    extra: list[str] | tuple[str, ...] = (),
) -> tuple[list[str], dict[str, str]]:
    """Flower's argv and environment: the project's app on the configured
    broker; basic auth goes in the environment (argv is visible in `ps`)."""
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.app",
        "flower",
        f"--port={port or settings.flower_port}",
        f"--address={address or settings.flower_address}",
    ]
    if settings.flower_url_prefix:
        cmd.append(f"--url_prefix={settings.flower_url_prefix}")
    if not any(a.startswith("--tasks_columns") for a in extra):
        # Flower hides args by default; here they are the masked summary.
        cmd.append(f"--tasks_columns={FLOWER_COLUMNS}")
    cmd += list(extra)
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    env["ORCH_STATE_DIR"] = str(settings.state)
    if settings.flower_basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    return cmd, env


def flower(
    ctx: typer.Context,
    port: Optional[int] = typer.Option(None, "--port", help="Default: flower_port (5555)"),
    address: Optional[str] = typer.Option(
        None, "--address", help="Default: flower_address (127.0.0.1)"
    ),
) -> None:
    """Run Flower on the project's app and configured broker (as `celery -A
    tasks.app flower`): workers, queues and every task with a short masked
    summary of its arguments. Options after `--` go to Flower."""
    s = current().settings
    if s.embedded_broker:
        err.print(
            "[yellow]warning:[/] the embedded SQLite broker carries no task events: "
            "Flower will list workers it can ping but no tasks. Use a Redis broker "
            "(ORCH_BROKER_URL) to watch tasks.",
            highlight=False,
        )
    if s.flower_basic_auth is None and (address or s.flower_address) not in (
        "127.0.0.1",
        "localhost",
    ):
        err.print(
            "[yellow]warning:[/] Flower listens beyond this machine without a "
            "password; set ORCH_FLOWER_BASIC_AUTH=user:password",
            highlight=False,
        )
    cmd, env = flower_command(s, port=port, address=address, extra=ctx.args)
    os.execve(cmd[0], cmd, env)


# -- smoke -------------------------------------------------------------------------


def smoke(
    json: bool = typer.Option(
        False, "--json", help="Print {ok, exit_code, job_id, failed, checks} as JSON"
    ),
    api: Optional[str] = typer.Option(
        None, "--api", metavar="URL", help="Also GET URL/healthz and URL/readyz of a running API"
    ),
    timeout: float = typer.Option(
        120.0, help="Give up waiting for the job after N seconds (exit 4)"
    ),
    workspace_root: Optional[Path] = typer.Option(
        None,
        "--workspace-root",
        file_okay=False,
        exists=True,
        help="Make the throwaway workspace here: a folder the workers see at the same "
        "path (default: the system's temporary folder)",
    ),
) -> None:
    """Submit a tiny job (one replace and a read in a throwaway workspace), run it
    through the configured broker and a worker (one is started on the embedded
    default), replay and verify its events, and check readiness. Prints a
    pass/fail table with a remedy per failed row; exit 0 all passed, 4
    infrastructure down, 1 otherwise."""
    root = current()
    s = root.settings

    def submit(spec: Path, base: Path) -> tuple[Any, str, list[Any]]:
        st, job_id, _, tickets = submit_job(spec, base)
        return st, job_id, tickets

    def follow(st: Any, job_id: str, names: dict[str, str], proc: Any, limit: float) -> Any:
        return render.follow(
            st,
            job_id,
            "orchestrator-smoke",
            2,
            names,
            quiet=True,
            console=err,
            worker=proc,
            timeout=limit,
        )

    deps = smoke_mod.Deps(
        submit=submit,
        ensure_worker=lambda _settings: root.ensure_worker(err),
        stop_worker=workers.stop_worker,
        follow=follow,
    )
    report = smoke_mod.run(s, deps, api=api, timeout=timeout, workspace_root=workspace_root)
    if json:
        _json(report.to_json())
    else:
        _table(
            f"smoke: {'passed' if report.ok else 'FAILED'}"
            + (f" (job {report.job_id})" if report.job_id else ""),
            [(r.name, r.ok, r.detail, r.remedy) for r in report.rows],
        )
    raise typer.Exit(report.exit_code)


def doctor(
    json: bool = typer.Option(
        False, "--json", help="Print the report as JSON (docs/schemas/doctor.schema.json)"
    ),
) -> None:
    """Check this installation: configuration, store, broker, worker, sandbox,
    Chromium and the model endpoint, each with what to do when it fails; and
    which sandbox shell commands run in, what it contains and what it does not.
    Exit 0 when every required check passes, 2 bad configuration, 4 a service
    cannot be reached."""
    root = current()
    box = sandbox.describe(sandbox.probe())
    data = doctor_mod.report(
        doctor_mod.run_checks(
            lambda: root.settings, sandbox_report=box, ping=lambda: root.dispatcher.ping()
        ),
        box,
    )
    if json:
        _json(data)
    else:
        doctor_mod.render(out, data)
    raise typer.Exit(data["exit_code"])


# -- resume ------------------------------------------------------------------------


def resume(
    job_id: str = typer.Argument(..., help="A running job (from `status`, `health`)"),
    base_dir: Optional[Path] = typer.Option(
        None,
        "--base-dir",
        help="Where the job's targets resolve, for sessions that never started "
        "(default: the folder its started sessions ran in, else the current one)",
    ),
    json: bool = JSON_OPT,
) -> None:
    """Enqueue a job's unfinished sessions again, each from its next step, as
    recorded in the event store (after a broker lost their messages). Safe
    to repeat: a step already recorded is not recorded twice."""
    root = current()
    s = root.settings
    docs = [_policy.load_policy(s.policy_file).doc] if s.policy_file else []
    found = _resume.resume(
        root.store(for_writing=True),
        root.dispatcher,
        job_id,
        base_dir=(base_dir or Path.cwd()).resolve(),
        policy_files=docs,
        tier=s.tier,
    )
    if json:
        _json({"job_id": job_id, "resumed": [r.to_json() for r in found]})
        return
    if not found:
        out.print(f"job {job_id}: every unfinished session waits for an answer; nothing to resume")
    for r in found:
        out.print(
            f"resumed {r.ticket.target} ({r.ticket.session_id}) from step {r.start + 1}",
            highlight=False,
        )

"""`orchestrator diagnose DIR`: a read-only diagnostics session, run like
`orchestrator run` runs a job (recorded, policy-checked, sandboxed, through
a real worker), printed as a table or as JSON (docs/schemas/diagnose.schema.json).

Exit codes: 0 no error findings, 1 errors found, 2 bad input or
configuration, 4 infrastructure unavailable (no worker, a store or model
endpoint down, a session that could not finish).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

import orjson
import typer
from rich.console import Console
from rich.table import Table

from orchestrator import lazy
from orchestrator.cli.common import err
from orchestrator.cli.root import current
from orchestrator.config.settings import Settings
from orchestrator.ops import workers

# Heavy parts (SQLAlchemy, Alembic, the runner, the payload models) load in
# the commands that use them, not for `--help` (bench/cli_startup.py).
render = lazy.module("orchestrator.cli.render")
yaml = lazy.module("yaml")
_policy = lazy.module("orchestrator.guard.policy")
_history = lazy.module("events.history")
_scripted = lazy.module("orchestrator.agent.providers.scripted")
confirmations = lazy.module("orchestrator.run.confirmations")
dg = lazy.module("orchestrator.run.diagnose")
workflows = lazy.module("orchestrator.service.workflows")


out = Console()
MAX_AUTO_DENIALS = 20  # a model that keeps asking for approval is stopped by max_turns


def register(app: typer.Typer) -> None:
    app.command("diagnose")(diagnose)


def diagnose(
    directory: Optional[Path] = typer.Argument(
        None, help="The repository to diagnose (nothing in it is changed)"
    ),
    json: bool = typer.Option(
        False, "--json", help="Print the report as JSON (docs/schemas/diagnose.schema.json)"
    ),
    mode: str = typer.Option(
        "auto",
        "--mode",
        help="recipe: the deterministic "
        "checks; agent: a model investigates and writes the "
        "analysis; auto: agent when ORCH_MODEL_PROVIDER=openai "
        "or --script is given, else recipe",
    ),
    script: Optional[Path] = typer.Option(
        None,
        "--script",
        exists=True,
        dir_okay=False,
        help="Agent mode on the scripted model: a YAML file of its turns",
    ),
    timeout: Optional[float] = typer.Option(None, help="Give up waiting after N seconds (exit 4)"),
    keep_worker: bool = typer.Option(False, help="Leave a worker started here running"),
    print_policy: bool = typer.Option(
        False,
        "--print-policy",
        help="Print the session's policy (YAML, for `orchestrator policy check --policy`) and exit",
    ),
) -> None:
    """Run a repository's checks (tests, compile, ruff, mypy) in a read-only session
    and report findings: severity, file, line, evidence and a next step."""
    if print_policy:
        sys.stdout.write(
            yaml.safe_dump(dg.diagnose_policy().model_dump(mode="json"), sort_keys=False, width=100)
        )
        return
    if directory is None:
        _fail("give the repository to diagnose: `orchestrator diagnose DIR`", 2)
    target = directory.expanduser().resolve()
    if not target.is_dir():
        _fail(f"{directory} is not a directory; give the repository's folder", 2)
    s = current().settings
    chosen = _mode(mode, s, script)
    spec = _spec(chosen, target, s, script)
    report = _run(s, spec, target, chosen, quiet=json, timeout=timeout, keep_worker=keep_worker)
    if json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        table(out, report)
    raise typer.Exit(report["exit_code"])


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _mode(mode: str, s: Settings, script: Path | None) -> str:
    if mode not in ("auto", "recipe", "agent"):
        _fail(f"--mode {mode!r}: use auto, recipe or agent", 2)
    if mode == "recipe" and script is not None:
        _fail("--script runs the agent on a scripted model; drop it for the recipe", 2)
    if mode == "auto":
        return "agent" if s.model_provider == "openai" or script is not None else "recipe"
    return mode


def _spec(mode: str, target: Path, s: Settings, script: Path | None) -> Any:
    if mode == "recipe":
        return dg.recipe_spec(target)

    if script is not None:
        return dg.agent_spec(target, provider="scripted", turns=_scripted.load_script(script))
    if s.model_provider == "scripted":
        if s.model_script is None:
            _fail(
                "agent mode on the scripted model needs its turns: --script FILE or "
                "ORCH_MODEL_SCRIPT (or ORCH_MODEL_PROVIDER=openai for a real model)",
                2,
            )
        return dg.agent_spec(
            target, provider="scripted", turns=_scripted.load_script(s.model_script)
        )
    return dg.agent_spec(target, provider="openai")


def _run(
    s: Settings,
    spec: Any,
    target: Path,
    mode: str,
    *,
    quiet: bool,
    timeout: float | None,
    keep_worker: bool,
) -> dict[str, Any]:
    root = current()
    docs = [_policy.load_policy(s.policy_file).doc] if s.policy_file is not None else []
    st = root.store(for_writing=True)
    job_id, tickets = workflows.submit(
        st,
        root.dispatcher,
        spec,
        target.parent,
        actor=s.submitter,
        policy_files=docs,
        tier=s.tier,  # type: ignore[arg-type]
    )
    ticket = tickets[0]
    with workers.StartedWorker(root.ensure_worker(err), keep=keep_worker) as worker:
        for _ in range(MAX_AUTO_DENIALS + 1):
            view = render.follow(
                st,
                job_id,
                spec.name,
                len(spec.steps),
                {ticket.session_id: str(target)},
                quiet=quiet,
                console=err,
                worker=worker.proc,
                timeout=timeout,
            )
            if view.done or not _deny_waiting(st, s, ticket.session_id):
                break
        worker.wind_down()
        return dg.report(
            _history.history(st, ticket.session_id), job_id=job_id, target=str(target), mode=mode
        )


def _deny_waiting(st: Any, s: Settings, session_id: str) -> bool:
    """Refuse, on the record, what the session waits to have approved (a
    program outside the system folders asks instead of being denied), so a
    read-only session never waits for a person. True if it goes on."""
    waiting = [w for w in confirmations.pending(st) if w.session_id == session_id]
    for w in waiting:
        workflows.answer(
            st,
            current().dispatcher,
            w,
            grant=False,
            by=s.submitter,
            reason="diagnose sessions are read-only: nothing that needs approval runs",
        )
    return bool(waiting)


_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}
_CHECK_STYLE = {
    "ran": "green",
    "skipped": "dim",
    "denied": "red",
    "timeout": "red",
    "error": "red",
    "not-run": "dim",
}


def table(console: Console, report: dict[str, Any]) -> None:
    """The report for people: the checks, then the findings, most severe first."""
    n = report["summary"]
    console.print(
        f"[bold]diagnose[/] {report['target']} ({report['mode']}"
        f"{', ' + report['model'] if report['mode'] == 'agent' else ''}): "
        f"{n['errors']} error(s), {n['warnings']} warning(s), {n['info']} info",
        highlight=False,
    )
    if report["checks"]:
        checks = Table(title="checks", title_justify="left", show_edge=False)
        for col in ("check", "status", "exit", "findings", "command"):
            checks.add_column(col, overflow="fold")
        for c in report["checks"]:
            checks.add_row(
                c["name"],
                f"[{_CHECK_STYLE[c['status']]}]{c['status']}[/]",
                "" if c["exit_code"] is None else str(c["exit_code"]),
                str(c["findings"]),
                c["command"],
            )
        console.print(checks)
    if report["agent_summary"]:
        console.print(f"[bold]summary:[/] {report['agent_summary']}", highlight=False)
    if report["findings"]:
        found = Table(title="findings", title_justify="left", show_edge=False)
        for col in ("severity", "where", "check", "evidence", "next step"):
            found.add_column(col, overflow="fold")
        for f in report["findings"]:
            where = (f["file"] or "") + (f":{f['line']}" if f["line"] else "")
            found.add_row(
                f"[{_STYLE[f['severity']]}]{f['severity']}[/]",
                where,
                f["check"],
                f["evidence"],
                f["next_step"],
            )
        console.print(found)
    else:
        console.print("no findings", highlight=False)
    if report["error"]:
        console.print(f"[red]the session did not finish: {report['error']}[/]", highlight=False)
    console.print(
        f"[dim]session {report['session_id']}: every check is in its audit log "
        f"(`orchestrator audit replay {report['session_id']}`)[/]",
        highlight=False,
    )

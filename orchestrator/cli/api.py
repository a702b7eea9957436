"""`orchestrator api` (serve the HTTP API with uvicorn), `orchestrator api
token` (make a bearer token and its configuration entry), and `orchestrator
cancel JOB_ID` (the same cancellation as `POST /jobs/{id}/cancel`)."""

from __future__ import annotations

import json as jsonlib
from typing import Optional

import typer
from rich.console import Console

from orchestrator import lazy
from orchestrator.cli.common import JSON_OPT, err
from orchestrator.cli.root import current
from orchestrator.config.settings import ApiToken

# Loaded in the commands that use them, not for `--help` (bench/cli_startup.py).
_api = lazy.module("orchestrator.api")
uvicorn = lazy.module("uvicorn")
metrics = lazy.module("orchestrator.ops.metrics")
_auth = lazy.module("orchestrator.api.auth")
workflows = lazy.module("orchestrator.service.workflows")

out = Console()
api_app = typer.Typer(
    rich_markup_mode="markdown",
    help="The HTTP API (docs/api.md): run with no subcommand to serve it.",
    invoke_without_command=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(api_app, name="api")
    app.command("cancel")(cancel)


@api_app.callback()
def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on"),
    port: int = typer.Option(8000, "--port", help="Port to listen on"),
    workers: int = typer.Option(1, "--workers", help="uvicorn worker processes"),
    log_level: Optional[str] = typer.Option(
        None, "--log-level", help="uvicorn's (default from config)"
    ),
) -> None:
    """Serve the API (OpenAPI at /openapi.json, docs at /docs). It enqueues
    jobs for Celery workers (`orchestrator worker`); it runs none itself."""
    if ctx.invoked_subcommand is not None:
        return

    s = current().settings
    if not s.api_tokens:
        err.print(
            "[yellow]no api_tokens configured: every route but /healthz and /readyz "
            "will answer 401; make one with `orchestrator api token`[/]"
        )
    if s.api_workspace_root is None:
        err.print("[yellow]api_workspace_root is not set: POST /jobs is refused[/]")
    level = (log_level or s.log_level).lower()
    # The workers' metrics of this state folder (inherited by uvicorn's workers).
    metrics.share_dir(s)
    if workers > 1:
        uvicorn.run(
            "orchestrator.api.app:from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=level,
        )
        return

    uvicorn.run(_api.create_app(s), host=host, port=port, log_level=level)


@api_app.command("token")
def token(
    principal: str = typer.Option(
        ..., "--principal", help="Who the token is for (events they cause are by `api:PRINCIPAL`)"
    ),
    role: list[str] = typer.Option(
        ..., "--role", help="submitter | operator | auditor | admin (repeatable)"
    ),
) -> None:
    """Make a new token: prints the token once (give it to its owner) and the
    `api_tokens` entry with its sha256 (put that in the configuration)."""
    bad = [r for r in role if r not in _auth.ROLES]
    if bad:
        err.print(
            f"[bold red]error:[/] unknown role(s) {', '.join(bad)}; use {', '.join(_auth.ROLES)}",
            highlight=False,
        )
        raise typer.Exit(2)
    value = _auth.new_token()
    try:
        roles = tuple(dict.fromkeys(role))
        entry = ApiToken(
            principal=principal,
            roles=roles,  # type: ignore[arg-type]
            sha256=_auth.token_hash(value),
        )
    except ValueError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    line = jsonlib.dumps(entry.model_dump(exclude_none=True))
    out.print(f"token (shown once): {value}", highlight=False, soft_wrap=True)
    out.print(f"config entry: {line}", highlight=False, soft_wrap=True)
    out.print(
        f"e.g. ORCH_API_TOKENS='[{line}]' (a JSON list; one entry per token)",
        highlight=False,
        soft_wrap=True,
    )


def cancel(
    job_id: str = typer.Argument(..., help="A job id from submit or run"),
    reason: str = typer.Option(
        "", "--reason", help="Why (recorded, and shown in each session's status)"
    ),
    json: bool = JSON_OPT,
) -> None:
    """Stop a job: a running shell step is killed within a few seconds, each
    session ends ("cancelled by YOU: REASON") and the job ends `cancelled`;
    sessions waiting for a confirmation end now."""
    root = current()
    done = workflows.cancel(
        root.store(for_writing=True), job_id, by=root.settings.submitter, reason=reason
    )
    if json:
        out.print_json(data=done.to_json())
        return
    first = "" if done.ours else f" (already requested by {done.by}: {done.reason})"
    err.print(
        f"cancelling job {job_id}{first}: {len(done.stopped)} waiting session(s) "
        f"ended, {len(done.running)} stop within seconds (a running shell step is "
        "killed); follow with "
        f"`orchestrator status {job_id}`",
        highlight=False,
    )

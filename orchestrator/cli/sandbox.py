"""One call without a job: `sandbox run` (a shell command) and `fs read|list|write|delete`,
under the same policy and sandbox as a job's step."""

from __future__ import annotations

import sys
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
)
from orchestrator.cli.root import current

# Loaded in the commands that use them, not for `--help` (bench/cli_startup.py).
_policy = lazy.module("orchestrator.guard.policy")
_steps = lazy.module("orchestrator.run.steps")
adhoc = lazy.module("orchestrator.run.adhoc")
render = lazy.module("orchestrator.cli.render")

# -- one call: sandbox run, fs ------------------------------------------------------

sandbox_app = typer.Typer(
    rich_markup_mode="markdown",
    help="Run one command through policy, sandbox and the event store, "
    "exactly as a job step would.",
    no_args_is_help=True,
)
fs_app = typer.Typer(
    rich_markup_mode="markdown",
    help="The filesystem tool through policy and the event store, exactly as a job step would.",
    no_args_is_help=True,
)
WORKSPACE_OPT = typer.Option(
    Path("."),
    "--workspace",
    "-w",
    exists=True,
    file_okay=False,
    help="The folder the call is confined to (default: cwd)",
)


def _one(
    workspace: Path,
    step: Any,
    policy_file: Path | None,
    tier: str | None,
    allow_destructive: bool,
    as_json: bool,
    show_output: bool = True,
) -> None:
    if tier is not None and tier not in _policy.TIERS:
        fail(f"--tier {tier!r} is not a tier; use one of {', '.join(_policy.TIERS)}", 2)
    s = current().settings
    docs = [_policy.load_policy(f).doc for f in (policy_file, s.policy_file) if f is not None]
    result = adhoc.run_one(
        current().store(for_writing=True),
        workspace,
        step,
        actor=s.submitter,
        policy_files=docs,
        tier=tier or s.tier,  # type: ignore[arg-type]
        elevated_by=s.submitter if allow_destructive else None,
        settings=s,
    )
    session = result.state.session
    entry = result.state.ledger.entries[-1] if result.state.ledger.entries else None
    if as_json:
        emit_json(
            {
                "session_id": result.session_id,
                "status": result.status,
                "decision": entry.decision if entry else None,
                "rule_id": entry.rule_id if entry else None,
                "output": result.output,
                "error": session.error,
            }
        )
    else:
        if show_output and result.output:
            # the tool's output, never raw: an ESC or CR in it would act on
            # the terminal (--json gives it exactly)
            text = render.printable(result.output)
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
        if entry is not None:
            err.print(
                f"[dim]{entry.decision} by rule {entry.rule_id}: {render.shown(entry.reason)}[/]",
                highlight=False,
            )
        for c in session.waiting:
            err.print(
                f"[yellow]waiting for confirmation[/] {c.call_id}: approve with "
                f"`orchestrator approve {c.call_id}`",
                highlight=False,
            )
        if session.error:
            err.print(f"[red]{render.shown(session.error)}[/]", highlight=False)
        err.print(
            f"[dim]session {result.session_id} ({result.status}); see "
            f"`orchestrator audit replay {result.session_id}`[/]",
            highlight=False,
        )
    raise typer.Exit(result.exit_code)


@sandbox_app.command("run", context_settings={"allow_interspersed_args": False})
def sandbox_run(
    command: list[str] = typer.Argument(..., help="The command and its arguments (after --)"),
    workspace: Path = WORKSPACE_OPT,
    policy: Optional[Path] = POLICY_OPT,
    tier: Optional[str] = TIER_OPT,
    allow_destructive: bool = ELEVATE_OPT,
    timeout: float = typer.Option(300.0, help="Wall-clock limit in seconds"),
    json: bool = JSON_OPT,
) -> None:
    """Decide and run one command as a job's shell step would, e.g.
    `orchestrator sandbox run -w repo -- python3 -m pytest -q`."""
    _one(
        workspace,
        _steps.ShellStep(command=tuple(command), timeout_s=timeout),
        policy,
        tier,
        allow_destructive,
        json,
    )


@fs_app.command("read")
def fs_read(
    path: str,
    workspace: Path = WORKSPACE_OPT,
    policy: Optional[Path] = POLICY_OPT,
    tier: Optional[str] = TIER_OPT,
    json: bool = JSON_OPT,
) -> None:
    """Print a file of the workspace (policy decides; `.env` and keys are denied)."""
    _one(workspace, _steps.ReadStep(path=path), policy, tier, False, json)


@fs_app.command("list")
def fs_list(
    path: str = typer.Argument(".", help="A folder of the workspace"),
    glob: list[str] = typer.Option([], "--glob", help="Only paths matching (repeatable)"),
    workspace: Path = WORKSPACE_OPT,
    policy: Optional[Path] = POLICY_OPT,
    tier: Optional[str] = TIER_OPT,
    json: bool = JSON_OPT,
) -> None:
    """List the files under a folder (files the policy denies are not shown)."""
    _one(workspace, _steps.ListStep(path=path, glob=tuple(glob)), policy, tier, False, json)


@fs_app.command("write")
def fs_write(
    path: str,
    content: Optional[str] = typer.Option(None, "--content"),
    source: Optional[Path] = typer.Option(
        None, "--from", exists=True, dir_okay=False, help="Take the content from this file"
    ),
    workspace: Path = WORKSPACE_OPT,
    policy: Optional[Path] = POLICY_OPT,
    tier: Optional[str] = TIER_OPT,
    allow_destructive: bool = ELEVATE_OPT,
    json: bool = JSON_OPT,
) -> None:
    """Write a file atomically (temp file, fsync, rename), recorded with its diff."""
    if (content is None) == (source is None):
        fail("give the content with exactly one of --content TEXT or --from FILE", 2)
    text = content if content is not None else source.read_text(encoding="utf-8")  # type: ignore[union-attr]
    _one(
        workspace, _steps.WriteStep(path=path, content=text), policy, tier, allow_destructive, json
    )


@fs_app.command("delete")
def fs_delete(
    path: str,
    workspace: Path = WORKSPACE_OPT,
    policy: Optional[Path] = POLICY_OPT,
    tier: Optional[str] = TIER_OPT,
    allow_destructive: bool = ELEVATE_OPT,
    json: bool = JSON_OPT,
) -> None:
    """Delete a file: destructive, so it waits for `orchestrator approve` unless
    --allow-destructive is given."""
    _one(workspace, _steps.DeleteStep(path=path), policy, tier, allow_destructive, json)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the main app."""
    app.add_typer(sandbox_app, name="sandbox")
    app.add_typer(fs_app, name="fs")

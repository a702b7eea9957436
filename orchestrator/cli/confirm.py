"""Permission: `policy check` (what a request would get), `pending`, `approve` and `deny`."""

from __future__ import annotations

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
)
from orchestrator.cli.root import current
from orchestrator.ops import workers

# Heavy parts (SQLAlchemy, Alembic, the runner, the payload models) load in
# the commands that use them, not for `--help` (bench/cli_startup.py).
render = lazy.module("orchestrator.cli.render")
_policy = lazy.module("orchestrator.guard.policy")
_decision = lazy.module("orchestrator.guard.decision")
_watch = lazy.module("orchestrator.run.watch")
confirmations = lazy.module("orchestrator.run.confirmations")
workflows = lazy.module("orchestrator.service.workflows")


# -- confirmations ---------------------------------------------------------------

policy_app = typer.Typer(
    rich_markup_mode="markdown",
    help="Test a policy without running anything.",
    no_args_is_help=True,
)


@policy_app.command("check", context_settings={"allow_interspersed_args": False})
def policy_check(
    command: Optional[list[str]] = typer.Argument(
        None,
        help="After --: a command (several words: an argv; one quoted "
        "argument: a shell line with pipes and substitutions)",
    ),
    path: Optional[str] = typer.Option(
        None, "--path", help="A path relative to the workspace, instead of a command"
    ),
    op: str = typer.Option("read", "--op", help="With --path: read | write | delete"),
    policy: Optional[Path] = POLICY_OPT,
    tier: Optional[str] = TIER_OPT,
    allow_destructive: bool = ELEVATE_OPT,
    json: bool = typer.Option(False, "--json", help="Print the verdict as JSON"),
    explain: bool = typer.Option(
        False,
        "--explain",
        help="Also list every rule in force and where it came from (built-in or the "
        "policy); alone, without a command or --path, only that",
    ),
) -> None:
    """Print the decision, the deciding rule and its reason, and every rule that
    matched, without running anything. Exit 0 when allowed, 3 when denied or
    when it would ask for confirmation.

    \b
      orchestrator policy check -- git push --force origin main
      orchestrator policy check -- 'curl -s https://x.sh | sh'
      orchestrator policy check --path .env --op read --policy team.yaml --json
      orchestrator policy check --explain --policy allow-list.yaml
    """
    if tier is not None and tier not in _policy.TIERS:
        fail(f"--tier {tier!r} is not a tier; use one of {', '.join(_policy.TIERS)}", 2)
    if path is not None and command:
        fail("give a command after -- or a --path, not both", 2)
    if path is None and not command and not explain:
        fail("give a command after -- or a --path (or --explain to list the rules)", 2)
    if op not in ("read", "write", "delete"):
        fail(f"--op {op!r}: use read, write or delete", 2)
    s = current().settings
    pol = _combined_policy(policy, s.policy_file)
    chosen = tier or s.tier
    if path is None and not command:
        _explain(pol, json)
        raise typer.Exit(0)
    if path is not None:
        tool, args = op, {"path": path}
    else:
        assert command
        tool, args = "shell", {"command": command[0] if len(command) == 1 else list(command)}
    verdict = _decision.decide(tool, args, pol, tier=chosen, elevated=allow_destructive)  # type: ignore[arg-type]
    effective = _policy.strictest_tier(pol.doc.tier, chosen)  # type: ignore[arg-type]
    matches = _distinct_matches(verdict)
    if json:
        emit_json(
            {
                "tool": tool,
                "args": args,
                "decision": verdict.decision,
                "rule_id": verdict.rule_id,
                "reason": verdict.reason,
                "matches": matches,
                "policy": pol.name,
                "policy_hash": pol.hash,
                "tier": chosen,
                "effective_tier": effective,
                "elevated": allow_destructive,
                **({"rules": pol.explain()} if explain else {}),
            }
        )
    else:
        _print_verdict(verdict, matches, pol, effective, allow_destructive)
        if explain:
            _explain(pol, False)
    raise typer.Exit(0 if verdict.decision == "allow" else 3)


def _explain(pol: Any, as_json: bool) -> None:
    """The rules in force, in the order they apply, and where each came from."""
    rows = pol.explain()
    if as_json:
        emit_json({"policy": pol.name, "policy_hash": pol.hash, "rules": rows})
        return
    render.policy_rules(out, pol.name, rows)


def _combined_policy(policy: Path | None, configured: Path | None) -> Any:
    """The policy a session would get: `--policy` combined with the configured
    one, or the default when there is neither."""
    files = [f for f in (policy, configured) if f is not None]
    if not files:
        return _policy.DEFAULT_POLICY
    docs = [_policy.load_policy(f).doc for f in files]
    return _policy.parse_policy(
        _policy.combine(*docs).model_dump(mode="json"), "+".join(str(f) for f in files)
    )


def _distinct_matches(verdict: Any) -> list[dict[str, Any]]:
    """Every rule that matched, once per (rule, decision, reason)."""
    return list(
        {
            (m.rule_id, m.decision.word, m.reason): {
                "rule_id": m.rule_id,
                "decision": m.decision.word,
                "reason": m.reason,
                "destructive": m.destructive,
            }
            for m in verdict.matches
        }.values()
    )


def _print_verdict(
    verdict: Any, matches: list[dict[str, Any]], pol: Any, effective: str, elevated: bool
) -> None:
    """The deciding rule first, then the others that matched, then the policy."""
    style = {"allow": "green", "deny": "red", "ask": "yellow"}[verdict.decision]
    out.print(
        f"[bold {style}]{verdict.decision}[/] by rule [bold]{verdict.rule_id}[/]: {verdict.reason}",
        highlight=False,
    )
    for m in matches:
        if m["rule_id"] != verdict.rule_id:
            out.print(f"  also {m['decision']} by {m['rule_id']}: {m['reason']}", highlight=False)
    out.print(
        f"[dim]policy {pol.name} ({pol.hash[:12]}), tier {effective}"
        + (", elevated" if elevated else "")
        + "[/]",
        highlight=False,
    )


def pending_cmd(json: bool = JSON_OPT) -> None:
    """List the confirmations that wait for an answer, oldest first."""
    waiting = confirmations.pending(current().store())
    if json:
        emit_json([w.to_json() for w in waiting])
        return
    render.pending(out, waiting)


def _answer(ident: str, grant: bool, reason: str, wait: bool) -> None:
    root = current()
    st = root.store(for_writing=True)
    w = confirmations.find(st, ident)
    done = workflows.answer(
        st, root.dispatcher, w, grant=grant, by=root.settings.submitter, reason=reason
    )
    if not done.ours:
        fail(
            f"{w.call_id} was answered by someone else first; see "
            f"`orchestrator audit replay {w.session_id}`",
            1,
        )
    steps = done.steps
    verb = "approved" if grant else "denied"
    err.print(
        f"{verb} {w.call_id} ({w.tool}: {w.reason}); the session continues from "
        f"{done.continues_from}",
        highlight=False,
    )
    if not wait:
        err.print(
            f"follow it with `orchestrator status {w.job_id}` (a worker must run: "
            "`orchestrator worker`)"
        )
        return
    view = _watch.final_view(st, w.job_id)
    with workers.StartedWorker(current().ensure_worker(err)) as worker:
        render.follow(
            st,
            w.job_id,
            view.job.name,
            len(steps),
            {r.session_id: r.target for r in view.job.sessions},
            quiet=False,
            console=err,
            worker=worker.proc,
            timeout=None,
        )
        worker.wind_down()
        finish(st, w.job_id, None, False)
    raise typer.Exit(job_exit(st, w.job_id))


def approve(
    ident: str = typer.Argument(
        ..., help="The confirmation's id (from `pending`), or a unique prefix of it"
    ),
    reason: str = typer.Option("", "--reason", help="Why (recorded)"),
    wait: bool = typer.Option(
        False, "--wait", help="Start a worker if needed and follow the job until it settles"
    ),
) -> None:
    """Allow exactly that one waiting request, and continue its session."""
    _answer(ident, True, reason, wait)


def deny(
    ident: str = typer.Argument(
        ..., help="The confirmation's id (from `pending`), or a unique prefix of it"
    ),
    reason: str = typer.Option("", "--reason", help="Why (recorded)"),
    wait: bool = typer.Option(False, "--wait", help="Follow the job until it settles"),
) -> None:
    """Refuse a waiting request: its step fails (the session goes on only if
    the step is `continue_on_error`)."""
    _answer(ident, False, reason, wait)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the main app."""
    app.add_typer(policy_app, name="policy")
    app.command("pending")(pending_cmd)
    app.command("approve")(approve)
    app.command("deny")(deny)

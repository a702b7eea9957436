"""The `orchestrator` command line.

This module is the composition root: it is the one place in orchestrator/
that imports tasks/ (lazily, in the commands that talk to the queue).
Exit codes: 0 ok, 1 job failed, 2 bad input or config, 3 denied by policy,
4 infrastructure unavailable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import orjson
import typer

from events import migrate
from events import verify as verify_mod
from events.db import display_url
from events.errors import EventError
from events.replay import replay
from events.store import SqlEventStore, open_store
from orchestrator.cli import render
from orchestrator.cli.common import emit_json, err, fail, finish, job_exit, masked, out, submit_job
from orchestrator.cli.root import begin, current
from orchestrator.config.settings import get_settings
from orchestrator.errors import OrchestratorError
from orchestrator.ops import workers

app = typer.Typer(
    help=__doc__.split("\n\n")[0]
    + (
        " Submit batch refactor jobs to a Celery queue, watch them, and replay or verify "
        "their hash-chained audit log."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
audit_app = typer.Typer(help="Replay, verify and export the audit log.", no_args_is_help=True)
db_app = typer.Typer(help="Event store schema.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")


def _print_version(value: bool) -> None:
    if value:
        from orchestrator import __version__

        out.print(f"orchestrator {__version__}", highlight=False)
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
        import os

        os.environ["ORCH_CONFIG"] = str(config.expanduser().absolute())
        get_settings.cache_clear()
    begin()


# -- jobs ----------------------------------------------------------------------

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


@app.command()
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


@app.command()
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
    st, job_id, job_spec, tickets = submit_job(spec, base_dir, policy, tier, allow_destructive)
    proc = current().ensure_worker(err)
    try:
        render.follow(
            st,
            job_id,
            job_spec.name,
            len(job_spec.steps),
            {t.session_id: t.target for t in tickets},
            quiet=json,
            console=err,
            worker=proc,
            timeout=timeout,
        )
    finally:
        if proc is not None and not keep_worker:
            workers.stop_worker(proc)
    finish(st, job_id, out_dir, json)
    raise typer.Exit(job_exit(st, job_id))


@app.command()
def status(
    job_id: str = typer.Argument(..., help="A job id from submit or run"),
    json: bool = typer.Option(False, "--json"),
) -> None:
    """Where a job stands: each target's status, steps and files changed."""
    from orchestrator.run.watch import final_view, session_summary

    st = current().store()
    view = final_view(st, job_id)
    if not view.job.sessions:
        fail(
            f"no job {job_id} in the event store at {display_url(st.url)}; check the id "
            "and ORCH_STORE_URL",
            2,
        )
    rows = session_summary(view)
    if json:
        emit_json(
            {
                "job_id": job_id,
                "name": view.job.name,
                "status": view.job.status,
                "sessions": [{k: v for k, v in r.items() if k != "patch"} for r in rows],
            }
        )
    else:
        render.summary(out, view, rows, diffs=False)


@app.command()
def worker(
    concurrency: Optional[int] = typer.Option(
        None, "-c", "--concurrency", help="Worker processes (default from config)"
    ),
) -> None:
    """Run a Celery worker on the project's app in the foreground (production shape)."""
    import os

    s = current().settings
    if s.embedded_store:
        open_store(s.effective_store_url, upgrade=True).close()
    cmd = workers.worker_command(s, concurrency=concurrency, detach_files=False)
    os.execve(cmd[0], cmd, workers.worker_env(s))


@app.command()
def demo(
    directory: Path = typer.Option(
        Path("demo"), "--dir", help="Where to create the sample repositories"
    ),
    example: str = typer.Option("rename-function", help="Bundled example job to run"),
) -> None:
    """Create sample repositories, run a bundled example job on them through a real
    worker, and show the replay of one session and the verified audit log."""
    from importlib import resources

    from orchestrator.run.sample_repos import create_sample_repos

    repos = create_sample_repos(directory / "sample-repos")
    err.print(f"created {len(repos)} sample repositories under {directory / 'sample-repos'}")
    spec = Path(str(resources.files("orchestrator") / "examples" / f"{example}.yaml"))
    if not spec.exists():
        fail(f"no bundled example {example!r}; see orchestrator/examples/", 2)
    st, job_id, job_spec, tickets = submit_job(spec, directory)
    proc = current().ensure_worker(err)
    try:
        view = render.follow(
            st,
            job_id,
            job_spec.name,
            len(job_spec.steps),
            {t.session_id: t.target for t in tickets},
            quiet=False,
            console=err,
            worker=proc,
            timeout=None,
        )
    finally:
        if proc is not None:
            workers.stop_worker(proc)
    finish(st, job_id, directory / "patches", False)
    first = tickets[0].session_id
    out.rule(f"orchestrator audit replay {first}")
    render.replay(out, replay(st, first, use_snapshot=False))
    report = verify_mod.verify_rows(st.rows())
    out.rule("orchestrator audit verify")
    render.verify(out, report)
    raise typer.Exit(0 if view.job.status == "completed" and report.ok else 1)


# -- one call: sandbox run, fs ------------------------------------------------------

sandbox_app = typer.Typer(
    help="Run one command through policy, sandbox and the event store, "
    "exactly as a job step would.",
    no_args_is_help=True,
)
fs_app = typer.Typer(
    help="The filesystem tool through policy and the event store, exactly as a job step would.",
    no_args_is_help=True,
)
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(fs_app, name="fs")
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
    from orchestrator.guard.policy import TIERS, load_policy
    from orchestrator.run import adhoc

    if tier is not None and tier not in TIERS:
        fail(f"--tier {tier!r} is not a tier; use one of {', '.join(TIERS)}", 2)
    s = current().settings
    docs = [load_policy(f).doc for f in (policy_file, s.policy_file) if f is not None]
    result = adhoc.run_one(
        current().store(for_writing=True),
        workspace,
        step,
        actor=s.submitter,
        policy_files=docs,
        tier=tier or s.tier,  # type: ignore[arg-type]
        elevated_by=s.submitter if allow_destructive else None,
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
            sys.stdout.write(
                result.output if result.output.endswith("\n") else result.output + "\n"
            )
        if entry is not None:
            err.print(
                f"[dim]{entry.decision} by rule {entry.rule_id}: {entry.reason}[/]", highlight=False
            )
        for c in session.waiting:
            err.print(
                f"[yellow]waiting for confirmation[/] {c.call_id}: approve with "
                f"`orchestrator approve {c.call_id}`",
                highlight=False,
            )
        if session.error:
            err.print(f"[red]{session.error}[/]", highlight=False)
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
    json: bool = typer.Option(False, "--json"),
) -> None:
    """Decide and run one command as a job's shell step would, e.g.
    `orchestrator sandbox run -w repo -- python3 -m pytest -q`."""
    from orchestrator.run.steps import ShellStep

    _one(
        workspace,
        ShellStep(command=tuple(command), timeout_s=timeout),
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
    json: bool = typer.Option(False, "--json"),
) -> None:
    """Print a file of the workspace (policy decides; `.env` and keys are denied)."""
    from orchestrator.run.steps import ReadStep

    _one(workspace, ReadStep(path=path), policy, tier, False, json)


@fs_app.command("list")
def fs_list(
    path: str = typer.Argument(".", help="A folder of the workspace"),
    glob: list[str] = typer.Option([], "--glob", help="Only paths matching (repeatable)"),
    workspace: Path = WORKSPACE_OPT,
    policy: Optional[Path] = POLICY_OPT,
    tier: Optional[str] = TIER_OPT,
    json: bool = typer.Option(False, "--json"),
) -> None:
    """List the files under a folder (files the policy denies are not shown)."""
    from orchestrator.run.steps import ListStep

    _one(workspace, ListStep(path=path, glob=tuple(glob)), policy, tier, False, json)


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
    json: bool = typer.Option(False, "--json"),
) -> None:
    """Write a file atomically (temp file, fsync, rename), recorded with its diff."""
    from orchestrator.run.steps import WriteStep

    if (content is None) == (source is None):
        fail("give the content with exactly one of --content TEXT or --from FILE", 2)
    text = content if content is not None else source.read_text(encoding="utf-8")  # type: ignore[union-attr]
    _one(workspace, WriteStep(path=path, content=text), policy, tier, allow_destructive, json)


@fs_app.command("delete")
def fs_delete(
    path: str,
    workspace: Path = WORKSPACE_OPT,
    policy: Optional[Path] = POLICY_OPT,
    tier: Optional[str] = TIER_OPT,
    allow_destructive: bool = ELEVATE_OPT,
    json: bool = typer.Option(False, "--json"),
) -> None:
    """Delete a file: destructive, so it waits for `orchestrator approve` unless
    --allow-destructive is given."""
    from orchestrator.run.steps import DeleteStep

    _one(workspace, DeleteStep(path=path), policy, tier, allow_destructive, json)


# -- confirmations ---------------------------------------------------------------

policy_app = typer.Typer(help="Test a policy without running anything.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


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
) -> None:
    """Print the decision, the deciding rule and its reason, and every rule that
    matched, without running anything. Exit 0 when allowed, 3 when denied or
    when it would ask for confirmation.

    \b
      orchestrator policy check -- git push --force origin main
      orchestrator policy check -- 'curl -s https://x.sh | sh'
      orchestrator policy check --path .env --op read --policy team.yaml --json
    """
    from orchestrator.guard.policy import (
        DEFAULT_POLICY,
        TIERS,
        combine,
        decide,
        load_policy,
        parse_policy,
        strictest_tier,
    )

    if tier is not None and tier not in TIERS:
        fail(f"--tier {tier!r} is not a tier; use one of {', '.join(TIERS)}", 2)
    if (path is None) == (not command):
        fail("give a command after -- or a --path, not both and not neither", 2)
    if op not in ("read", "write", "delete"):
        fail(f"--op {op!r}: use read, write or delete", 2)
    s = current().settings
    docs = [load_policy(f).doc for f in (policy, s.policy_file) if f is not None]
    pol = (
        parse_policy(
            combine(*docs).model_dump(mode="json"),
            "+".join(str(f) for f in (policy, s.policy_file) if f),
        )
        if docs
        else DEFAULT_POLICY
    )
    chosen = tier or s.tier
    if path is not None:
        tool, args = op, {"path": path}
    else:
        assert command
        tool, args = "shell", {"command": command[0] if len(command) == 1 else list(command)}
    verdict = decide(tool, args, pol, tier=chosen, elevated=allow_destructive)  # type: ignore[arg-type]
    effective = strictest_tier(pol.doc.tier, chosen)  # type: ignore[arg-type]
    matches = list(
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
            }
        )
    else:
        style = {"allow": "green", "deny": "red", "ask": "yellow"}[verdict.decision]
        out.print(
            f"[bold {style}]{verdict.decision}[/] by rule [bold]{verdict.rule_id}[/]: "
            f"{verdict.reason}",
            highlight=False,
        )
        for m in matches:
            if m["rule_id"] != verdict.rule_id:
                out.print(
                    f"  also {m['decision']} by {m['rule_id']}: {m['reason']}", highlight=False
                )
        out.print(
            f"[dim]policy {pol.name} ({pol.hash[:12]}), tier {effective}"
            + (", elevated" if allow_destructive else "")
            + "[/]",
            highlight=False,
        )
    raise typer.Exit(0 if verdict.decision == "allow" else 3)


@app.command("pending")
def pending_cmd(json: bool = typer.Option(False, "--json")) -> None:
    """List the confirmations that wait for an answer, oldest first."""
    from orchestrator.run import confirmations

    waiting = confirmations.pending(current().store())
    if json:
        emit_json([w.to_json() for w in waiting])
        return
    render.pending(out, waiting)


def _answer(ident: str, grant: bool, reason: str, wait: bool) -> None:
    from orchestrator.run import confirmations
    from orchestrator.run.watch import final_view
    from orchestrator.service import workflows

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
    view = final_view(st, w.job_id)
    proc = current().ensure_worker(err)
    try:
        render.follow(
            st,
            w.job_id,
            view.job.name,
            len(steps),
            {r.session_id: r.target for r in view.job.sessions},
            quiet=False,
            console=err,
            worker=proc,
            timeout=None,
        )
    finally:
        if proc is not None:
            workers.stop_worker(proc)
    finish(st, w.job_id, None, False)
    raise typer.Exit(job_exit(st, w.job_id))


@app.command()
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


@app.command()
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


# -- audit ---------------------------------------------------------------------


@audit_app.command("replay")
def audit_replay(
    session_id: str,
    json: bool = typer.Option(False, "--json"),
    no_snapshot: bool = typer.Option(False, help="Fold every event from seq 1"),
) -> None:
    """Rebuild a session from its events alone: state, quota usage, permissions."""
    st = current().store()
    state = replay(st, session_id, use_snapshot=not no_snapshot)
    if state.last_seq == 0:
        fail(
            f"no events for session {session_id}; list sessions with `orchestrator status JOB_ID`",
            2,
        )
    if json:
        data = state.model_dump(mode="json")
        # A frozenset dumps in hash order, which differs from process to
        # process: sorted, the same store replays to the same bytes.
        data["session"]["changed_paths"].sort()
        emit_json(data)
    else:
        render.replay(out, state)


@audit_app.command("verify")
def audit_verify(
    session_id: Optional[str] = typer.Argument(None, help="Only this stream"),
    input: Optional[Path] = typer.Option(
        None, "--input", "-i", exists=True, help="Verify an export (JSONL) instead"
    ),
    public_key: list[Path] = typer.Option(
        [],
        "--public-key",
        exists=True,
        dir_okay=False,
        help="Trust digests signed by this key (repeatable; rotation keeps old "
        "ones); ORCH_AUDIT_PUBLIC_KEYS and the signing key are trusted too",
    ),
    digests_file: Optional[Path] = typer.Option(
        None,
        "--digests",
        exists=True,
        dir_okay=False,
        help="Digests kept outside the database (an export or `audit sign -o`)",
    ),
    require_proof: bool = typer.Option(
        False, help="Fail (exit 1) when a stream's last events are not covered by a signed digest"
    ),
    recheck_policy: Optional[str] = typer.Option(
        None,
        "--recheck-policy",
        metavar="POLICY_FILE|default",
        help="Re-decide every recorded request under this policy file (or "
        "`default`, today's built-in policy) and list each decision that would "
        "change",
    ),
    json: bool = typer.Option(False, "--json"),
) -> None:
    """Check every hash chain, sequence and stream boundary, and the signed
    digests of stream heads (which catch recomputed chains and truncation);
    list each problem and every stream no digest proves."""
    from orchestrator.audit import digests as audit

    trusted = audit.trusted_keys(current().settings, public_key)
    extra = audit.read_digest_file(digests_file) if digests_file is not None else []
    if input is not None:
        with open(input, "rb") as fh:
            report = verify_mod.verify_jsonl(fh)
        proof = audit.prove_export(input, trusted, extra)
    else:
        st = current().store()
        report = verify_mod.verify_rows(st.rows(session_id))
        proof = audit.prove_store(st, trusted, extra, session_id)
    rechecked = None
    if recheck_policy is not None:
        if input is not None:
            fail("--recheck-policy reads the store; drop --input (or import the export first)", 2)
        rechecked = _recheck(current().store(), recheck_policy, session_id)
    if json:
        data = {**report.to_json(), "proof": proof.to_json()}
        if rechecked is not None:
            data["recheck"] = {
                "policy": rechecked[0],
                "decisions": rechecked[1],
                "changed": [c.to_json() for c in rechecked[2]],
            }
        emit_json(data)
    else:
        render.verify(out, report, proof)
        if rechecked is not None:
            render.recheck(out, *rechecked)
    ok = report.ok and proof.ok and not (require_proof and proof.unproven)
    raise typer.Exit(0 if ok else 1)


def _recheck(st: SqlEventStore, source: str, session_id: str | None) -> tuple[str, int, list]:
    from events.digests import DIGEST_STREAM
    from orchestrator.audit.recheck import recheck_all
    from orchestrator.guard import policy as policy_mod

    chosen = (
        policy_mod.DEFAULT_POLICY if source == "default" else policy_mod.load_policy(Path(source))
    )
    streams = [session_id] if session_id else [s for s in st.stream_ids() if s != DIGEST_STREAM]
    ledgers = []
    for sid in streams:
        state = replay(st, sid)
        if state.session.session_id:  # job streams have no ledger
            ledgers.append((sid, state.ledger))
    total, changes = recheck_all(ledgers, chosen)
    return f"{chosen.name} ({chosen.hash[:12]})", total, changes


@audit_app.command("keygen")
def audit_keygen(
    out_dir: Path = typer.Option(Path("."), "--out", help="Where to write the key pair"),
) -> None:
    """Make an Ed25519 key pair for signing digests of stream heads.

    Keep the private key (audit-signing.pem) where the database cannot reach
    it and point ORCH_AUDIT_KEY_FILE at it on the machines that sign; give the
    public key (audit-signing.pub) to auditors for `audit verify --public-key`."""
    from orchestrator.audit import digests as audit

    private, public, kid = audit.keygen(out_dir)
    out.print(
        f"key {kid}\n  private: {private} (mode 600; set ORCH_AUDIT_KEY_FILE={private})"
        f"\n  public:  {public} (for `orchestrator audit verify --public-key {public}`)",
        highlight=False,
    )


@audit_app.command("sign")
def audit_sign(
    stream: Optional[str] = typer.Option(None, "--stream", help="Only this stream's head"),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        help="Also append the digest (JSONL) to this file, to keep a copy outside the database",
    ),
    json: bool = typer.Option(False, "--json"),
) -> None:
    """Sign a digest of the current stream heads with ORCH_AUDIT_KEY_FILE and
    append it to the audit-digests stream (run it periodically, e.g. hourly)."""
    from orchestrator.audit import digests as audit

    key = audit.signing_key(current().settings)
    if key is None:
        fail(
            "no signing key: set ORCH_AUDIT_KEY_FILE (make one with `orchestrator audit keygen`)", 2
        )
    event = audit.sign(current().store(for_writing=True), key, current().settings.submitter, stream)
    if output is not None:
        with open(output, "ab") as fh:
            fh.write(orjson.dumps(event.to_record(), option=orjson.OPT_SORT_KEYS) + b"\n")
    digest = event.payload
    if json:
        emit_json(
            {
                "position": event.position,
                "seq": event.seq,
                "key_id": digest.key_id,
                "streams": len(digest.heads),
                "covers_position": digest.position,
            }
        )
    else:
        out.print(
            f"signed {len(digest.heads)} stream head(s) up to position "
            f"{digest.position} with key {digest.key_id} (audit-digests seq {event.seq})"
        )


@audit_app.command("export")
def audit_export(
    output: Path = typer.Option(
        Path("-"), "--output", "-o", help="File to write (default: stdout)"
    ),
    stream: Optional[str] = typer.Option(None, "--stream", help="Only this session or job stream"),
) -> None:
    """Write events as JSONL (plus a closing manifest line) that `verify --input` checks."""
    from orchestrator.config.secrets import known_values
    from orchestrator.guard.masking import mask

    st = current().store()
    rows = st.raw_stream_rows(stream) if stream else st.raw_all()
    known = known_values()
    leaked = 0
    fh = sys.stdout.buffer if str(output) == "-" else open(output, "wb")
    try:
        for line in verify_mod.export_lines(rows):
            if known:  # events are masked when built; this catches what slipped past
                text = line.decode()
                safe = mask(text, known, patterns=False)
                if safe != text:
                    leaked += 1
                    line = safe.encode()
            fh.write(line)
    finally:
        if fh is not sys.stdout.buffer:
            fh.close()
    if leaked:
        err.print(
            f"[bold yellow]warning:[/] {leaked} event(s) held a known secret value; it "
            "is masked in this export, so their hashes no longer verify. The store "
            "still holds it: rotate the secret.",
            highlight=False,
        )


# -- db ------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the event store schema (Alembic migrations)."""
    st = SqlEventStore(current().settings.effective_store_url, check_schema=False)
    before, after = migrate.upgrade(st.engine)
    out.print(f"{display_url(st.url)}: schema {before or 'empty'} -> {after}")


@db_app.command("status")
def db_status() -> None:
    """Show the store's schema revision and the newest this release knows."""
    st = SqlEventStore(current().settings.effective_store_url, check_schema=False)
    out.print(
        f"{display_url(st.url)}: at {migrate.current_revision(st.engine) or 'empty'}, "
        f"head {migrate.head_revision()}"
    )


# -- doctor --------------------------------------------------------------------


@app.command()
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
    from orchestrator.ops import doctor as doctor_mod
    from orchestrator.sandbox import runtime as sandbox

    root = current()
    box = sandbox.describe(sandbox.probe())
    data = doctor_mod.report(
        doctor_mod.run_checks(
            lambda: root.settings, sandbox_report=box, ping=lambda: root.dispatcher.ping()
        ),
        box,
    )
    if json:
        emit_json(data)
    else:
        doctor_mod.render(out, data)
    raise typer.Exit(data["exit_code"])


from orchestrator.cli import chat as cli_chat  # noqa: E402

cli_chat.register(app)
from orchestrator.cli import diagnose as cli_diagnose  # noqa: E402

cli_diagnose.register(app)
from orchestrator.cli import api as cli_api  # noqa: E402

cli_api.register(app)
from orchestrator.cli import config as cli_config  # noqa: E402

cli_config.register(app)
from orchestrator.cli import ops as cli_ops  # noqa: E402

cli_ops.register(app)


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
        import click

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
        import traceback  # a bug: the traceback, secrets masked

        sys.stderr.write(masked("".join(traceback.format_exception(exc))))
        sys.exit(1)


def _observe() -> None:
    """Logs (and traces, when configured) for this process; a bad configuration
    still gets default logging, and the command reports the problem itself."""
    from orchestrator.ops import logs, tracing

    try:
        s = get_settings()
    except OrchestratorError:
        logs.configure()
        return
    logs.configure(s)
    tracing.setup(s, celery=True)


def _is_unreachable(exc: BaseException) -> bool:
    from kombu.exceptions import OperationalError as KombuOperationalError

    return isinstance(exc, (KombuOperationalError, ConnectionError, OSError))


if __name__ == "__main__":
    main()

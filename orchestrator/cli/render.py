"""What the CLI shows people: live progress, summaries, diffs, replays, reports."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from events import payloads as p
from events.envelope import Event
from orchestrator import lazy
from orchestrator.errors import InfraUnavailable
from orchestrator.run.watch import JobView

if TYPE_CHECKING:
    from events.digests import ProofReport
    from events.projections import Projections
    from events.store import EventStore
    from events.verify import VerifyReport

# Live progress (`run`) and highlighted diffs (pygments) load where they are
# shown, not for `status` (bench/cli_startup.py).
_progress = lazy.module("rich.progress")
_syntax = lazy.module("rich.syntax")

# Control characters a terminal acts on (ESC starts escape sequences that can
# move the cursor, rewrite the title or the clipboard; CR overwrites a line;
# NUL and the C1 range too): everything below 0x20 but newline and tab, DEL,
# and 0x80-0x9f. Shown escaped, as JSON export shows them.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` (tool output, an error, a model's words) safe to print to a
    terminal: each control character as a backslash-x escape (ESC as
    `\\x1b`), newlines and tabs kept."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def shown(text: object) -> str:
    """Recorded text inside rich markup: printable, and its brackets taken
    literally (`[bold]` in a tool's output is not a style)."""
    return escape(printable(str(text)))


POLL_S = 0.1
MAX_BARS = 12  # more targets than this: one bar per running target only


def _describe(e: Event) -> str | None:
    pl = e.payload
    if isinstance(pl, p.TurnStarted):
        return f"step {pl.turn} {pl.name} ({pl.kind}) started"
    if isinstance(pl, p.ToolCallCompleted):
        extra = f", count {pl.count}" if pl.count else ""
        return f"{pl.tool} ok in {pl.duration_s:.2f}s{extra}"
    if isinstance(pl, p.ToolCallFailed):
        return f"{pl.tool} FAILED: {pl.error}: {pl.message.splitlines()[0][:160]}"
    if isinstance(pl, p.FileChanged):
        return f"changes {pl.path}"
    if isinstance(pl, p.AgentStarted):
        return f"agent started: {pl.provider} model {pl.model}, tools {', '.join(pl.tools)}"
    if isinstance(pl, p.ModelResponded):
        said = (pl.content or "").strip().splitlines()
        calls = ", ".join(c.name if c.turn else f"{c.name} (invalid)" for c in pl.tool_calls)
        return f"model turn {pl.model_turn}: {said[0][:100] if said else '(no text)'}" + (
            f" -> {calls}" if calls else ""
        )
    if isinstance(pl, p.ModelFailed):
        return f"MODEL FAILED: {pl.error}: {pl.message[:160]}"
    if isinstance(pl, p.SessionCompleted):
        return f"completed, {pl.files_changed} file(s) changed"
    if isinstance(pl, p.SessionFailed):
        return f"FAILED: {pl.message[:200]}"
    return None


def follow(
    store: EventStore,
    job_id: str,
    name: str,
    steps: int,
    names: dict[str, str],
    *,
    quiet: bool,
    console: Console,
    worker: Any,
    timeout: float | None,
) -> JobView:
    """Poll the job's events until it completes (or all that is left waits for
    a confirmation), drawing a bar per target."""
    view = JobView(job_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    progress = _progress.Progress(
        _progress.TextColumn("{task.description}", style="bold"),
        _progress.BarColumn(),
        _progress.MofNCompleteColumn(),
        _progress.TextColumn("{task.fields[note]}"),
        _progress.TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )
    bars: dict[str, Any] = {}
    overall = progress.add_task(f"job {name}", total=len(names), note="")
    few = len(names) <= MAX_BARS
    if few:
        for sid, target in names.items():
            bars[sid] = progress.add_task(target, total=steps or None, note="queued")
    plain = not console.is_terminal
    with progress:
        while not view.settled:
            for e in view.poll(store):
                sid = e.stream_id
                note = _describe(e)
                note = None if note is None else shown(note)
                if sid in names and note is not None:
                    if sid not in bars and not view.sessions[sid].finished:
                        bars[sid] = progress.add_task(names[sid], total=steps or None, note="")
                    if sid in bars:
                        done = sum(
                            1 for t in view.sessions[sid].turns if t.status in ("ok", "failed")
                        )
                        progress.update(bars[sid], completed=done, note=note[:60])
                        if view.sessions[sid].finished and not few:
                            progress.remove_task(bars.pop(sid))
                    if plain and not quiet:
                        console.print(f"{names[sid]}: {note}", highlight=False)
                progress.update(
                    overall,
                    completed=len(view.job.finished),
                    note=f"{len(view.job.finished)}/{len(names)} targets done",
                )
            if view.settled:
                break
            if worker is not None and worker.poll() is not None:
                raise InfraUnavailable(
                    f"the worker started for this run exited (code {worker.returncode}); "
                    "see its log in the state folder (worker.log). The job is queued and "
                    f"resumes when a worker runs: `orchestrator worker`, then "
                    f"`orchestrator status {job_id}`"
                )
            if deadline is not None and time.monotonic() > deadline:
                raise InfraUnavailable(
                    f"job {job_id} did not finish within {timeout:g}s; it keeps running: "
                    f"`orchestrator status {job_id}`"
                )
            time.sleep(POLL_S)
    return view


def summary(
    console: Console, view: JobView, rows: list[dict[str, Any]], diffs: bool = True
) -> None:
    table = Table(title=f"job {view.job.name} ({view.job_id}): {view.job.outcome}")
    for col in ("target", "status", "steps", "files", "session", "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        style = {"completed": "green", "failed": "red"}.get(str(r["status"]), "yellow")
        table.add_row(
            str(r["target"]),
            f"[{style}]{r['status']}[/]",
            f"{r['steps_ok']}/{r['steps']}"
            if not r.get("agent")
            else f"{r['steps_ok']} ({r['agent']['model_turns']} model turns)",
            str(len(r["files_changed"])),
            str(r["session_id"]),
            str(r["error"] or ""),
        )
    console.print(table)
    if not diffs:
        return
    for r in rows:
        if r.get("agent") and r["agent"]["message"]:
            console.print(f"[bold]{r['target']}[/]: {r['agent']['message']}", highlight=False)
    for r in rows:
        if r["patch"]:
            console.rule(f"{r['target']}")
            console.print(
                _syntax.Syntax(
                    str(r["patch"]), "diff", theme="ansi_dark", background_color="default"
                )
            )


def patch_name(target: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", target).strip("_") or "target"


def write_patches(out_dir: Path, rows: list[dict[str, Any]]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for r in rows:
        if r["patch"]:
            path = out_dir / f"{patch_name(str(r['target']))}.patch"
            path.write_text(str(r["patch"]))
            written.append(path)
    return written


def replay(console: Console, state: Projections) -> None:
    s, q = state.session, state.quota
    console.print(
        f"[bold]session[/] {s.session_id}  job {s.job_id}\n"
        f"  target {shown(s.target)}\n  status [bold]{s.status}[/]"
        + (f"  ({shown(s.error)})" if s.error else "")
        + f"  events {s.last_seq}",
        highlight=False,
    )
    if s.policy is not None:
        console.print(
            f"  policy {s.policy.get('name', '?')} ({s.policy_hash[:12]})  tier "
            f"{s.tier}" + (f"  elevated by {s.elevated_by}" if s.elevated_by else ""),
            highlight=False,
        )
    if s.agent is not None:
        _conversation(console, s.agent)
    turns = Table(title="turns")
    for col in ("turn", "name", "kind", "status"):
        turns.add_column(col)
    for t in s.turns:
        turns.add_row(str(t.turn), Text(printable(t.name)), t.kind, t.status)
    console.print(turns)
    retried = [c for c in s.calls if len(c.attempts) > 1]
    if retried:
        attempts = Table(title="attempts (calls a redelivery ran again)")
        for col in ("call", "attempt", "worker", "outcome"):
            attempts.add_column(col)
        for c in retried:
            for a in c.attempts:
                attempts.add_row(c.call_id, str(a.attempt), a.worker, a.outcome)
        console.print(attempts)
    if s.files_changed:
        files = Table(title="files changed")
        for col in ("path", "before", "after"):
            files.add_column(col)
        for c in s.files_changed:
            files.add_row(
                Text(printable(c.path)),
                (c.before_hash or "(new)")[:12],
                (c.after_hash or "(deleted)")[:12],
            )
        console.print(files)
    quota = Table(title="quota usage")
    quota.add_column("measure")
    quota.add_column("value", justify="right")
    for tool, n in q.tool_calls:
        quota.add_row(f"{tool} calls", str(n))
    for name in (
        "tool_failures",
        "shell_cpu_s",
        "shell_wall_s",
        "bytes_written",
        "output_bytes",
        "model_calls",
        "tokens_in",
        "tokens_out",
        "tokens_cached",
    ):
        value = getattr(q, name)
        quota.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(quota)
    ledger = Table(title="permission decisions")
    for col in ("seq", "call", "tool", "decision", "rule", "policy", "by"):
        ledger.add_column(col, overflow="fold")
    for x in state.ledger.entries:
        ledger.add_row(
            str(x.seq),
            x.call_id.rsplit("/", 1)[-1],
            x.tool,
            str(x.decision),
            str(x.rule_id),
            (x.policy_hash or "")[:12],
            str(x.decided_by or ""),
        )
    console.print(ledger)


def _conversation(console: Console, a: Any) -> None:
    """An agent session's messages: who said what, and which tools it called."""
    console.print(
        f"  agent {a.provider} model {a.model} ({a.mode}), {a.model_turns} model "
        f"turns of {a.max_turns}, prompt {a.prompt_version}",
        highlight=False,
    )
    for entry in a.entries:
        if entry.role == "cancelled":
            console.print(f"  [yellow]turn {entry.model_turn} cancelled[/]", highlight=False)
            continue
        who = "user" if entry.role == "user" else f"model {entry.model_turn}"
        text = (entry.text or "").strip()
        said = shown(text[:300]) if text else "(no text)"
        console.print(f"  [bold]{who}[/]: {said}", highlight=False)
        for c in entry.calls:
            where = f"turn {c.turn}" if c.turn else f"[red]not run: {shown(c.error)}[/]"
            console.print(
                f"    -> {shown(c.name)} {shown(c.arguments[:120])}  ({where})", highlight=False
            )


def verify(console: Console, report: VerifyReport, proof: ProofReport | None = None) -> None:
    if report.ok:
        console.print(
            f"[green]chains intact[/]: {report.events} events in {report.streams} "
            "streams; every hash chain, sequence and stream boundary checks out"
        )
    else:
        console.print(
            f"[red]FAILED[/]: {len(report.problems)} problem(s) in {report.events} "
            f"events, {report.streams} streams:"
        )
        for problem in report.problems:
            console.print(f"  - {problem}", highlight=False)
    if proof is None:
        return
    for issue in proof.problems:
        console.print(f"  - [red]{issue}[/]", highlight=False)
    streams = len(proof.proven)
    proven = streams - len(proof.unproven)
    console.print(
        f"{'[green]' if proof.ok else '[red]'}signed digests[/]: {proof.digests} "
        f"digest(s), {len(proof.problems)} problem(s); {proven} of {streams} "
        "stream(s) proven up to their last event"
    )
    if proof.unproven:
        console.print(
            f"[yellow]UNPROVEN[/]: {len(proof.unproven)} stream(s) end after the "
            "last signed digest (a recomputed chain or a cut tail there would not "
            "show); sign with `orchestrator audit sign`",
            highlight=False,
        )
        for sid, (done, head) in list(sorted(proof.unproven.items()))[:10]:
            console.print(f"  - {sid}: proven to seq {done}, head at seq {head}", highlight=False)
        if len(proof.unproven) > 10:
            console.print(f"  ... and {len(proof.unproven) - 10} more (--json lists all)")


def recheck(console: Console, policy: str, decisions: int, changes: list[Any]) -> None:
    """What `audit verify --recheck-policy` found."""
    if not changes:
        console.print(
            f"recheck under {policy}: all {decisions} recorded decision(s) would stay the same"
        )
        return
    console.print(
        f"[yellow]recheck under {policy}[/]: {len(changes)} of {decisions} recorded "
        "decision(s) would change",
        highlight=False,
    )
    table = Table("session", "seq", "tool", "was", "now", "rule now", "why")
    for c in changes:
        table.add_row(
            c.stream_id[-12:],
            str(c.seq),
            c.tool,
            f"{c.was} ({c.was_rule})",
            c.now,
            c.now_rule,
            c.reason[:80],
        )
    console.print(table)


def pending(console: Console, waiting: list[Any]) -> None:
    """What `orchestrator pending` shows."""
    if not waiting:
        console.print("no confirmations are waiting")
        return
    table = Table(title=f"{len(waiting)} confirmation(s) waiting, oldest first")
    for col in ("id", "target", "step", "request", "rule", "why", "asked"):
        table.add_column(col, overflow="fold")
    for w in waiting:
        request = " ".join(w.args["command"]) if isinstance(w.args.get("command"), list) else w.tool
        table.add_row(
            w.call_id,
            w.target.rsplit("/", 1)[-1],
            f"{w.turn} {w.step}",
            request,
            w.rule_id,
            w.reason,
            w.asked_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)
    console.print("answer with `orchestrator approve ID` or `orchestrator deny ID --reason ...`")


def policy_rules(console: Console, name: str, rows: list[dict[str, Any]]) -> None:
    """`policy check --explain`: every rule, in the order the policy applies them."""
    table = Table(title=f"policy {name}: rules in the order they apply")
    for col in ("rule", "kind", "decision", "in force", "from", "matches"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            Text(r["id"]),
            r["kind"],
            r["decision"],
            "yes" if r["in_force"] else "no",
            Text(r["source"]),
            Text(r["matches"]),
        )
    console.print(table)
    off = sum(not r["in_force"] for r in rows)
    if off:
        console.print(
            f"[dim]{off} built-in allow rule(s) switched off by commands.builtins: false: "
            "only the programs the policy allows run[/]",
            highlight=False,
        )

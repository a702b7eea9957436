"""`orchestrator smoke`: one tiny job through the configured deployment, end to end.

The job replaces one line of one file in a throwaway workspace and reads the
file back: a real submission (policy, JobSubmitted), a real broker and
worker, real events. Then its events are replayed and their hash chains
verified, and readiness is asked (the broker, the store, a fresh worker
heartbeat), plus a running API's `/healthz` and `/readyz` when given.

Every check becomes a `Row` with a remedy when it failed. Exit codes: 0 all
passed, 4 when what failed is infrastructure (broker, store, no worker, an
API that does not answer, a job that never finished), 1 otherwise (the job
failed, its replay or chains are wrong).

The CLI wires the side effects in (`Deps`): submitting, starting and
stopping a worker, waiting and HTTP, so this module imports nothing of
`tasks/` and its report logic is tested on its own.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config.settings import Settings
from orchestrator.ops import health

__all__ = ["Row", "Report", "Deps", "run", "SPEC", "FILE", "exit_code"]

FILE = "SMOKE.txt"
BEFORE, AFTER = "status: before smoke", "status: after smoke"
SPEC = f"""\
# Written by `orchestrator smoke` next to its throwaway workspace.
name: orchestrator-smoke
description: one literal replace and a read in a throwaway workspace
tier: read-write
targets: [workspace]
steps:
  - kind: replace
    name: replace
    pattern: '{BEFORE}'
    replacement: '{AFTER}'
    literal: true
    expect: 1
  - kind: read
    name: read-back
    path: {FILE}
"""


@dataclass(frozen=True)
class Row:
    name: str
    ok: bool
    detail: str
    remedy: str = ""
    infra: bool = False  # a failure here is the deployment's, not the job's


@dataclass(frozen=True)
class Report:
    rows: tuple[Row, ...]
    job_id: str | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def exit_code(self) -> int:
        return exit_code(self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "job_id": self.job_id,
            "failed": [r.name for r in self.rows if not r.ok],
            "checks": [asdict(r) for r in self.rows],
        }


def exit_code(rows: tuple[Row, ...] | list[Row]) -> int:
    """0 all passed; 4 when any failure is infrastructure; else 1 (pure)."""
    failed = [r for r in rows if not r.ok]
    if not failed:
        return 0
    return 4 if any(r.infra for r in failed) else 1


@dataclass
class Deps:
    """The side effects the CLI provides."""

    # (spec file, base dir) -> (store, job_id, tickets), as `orchestrator submit`
    submit: Callable[[Path, Path], tuple[Any, str, list[Any]]]
    ensure_worker: Callable[[Settings], Any]  # a started process, or None
    stop_worker: Callable[[Any], None]
    # (store, job_id, names, worker, timeout) -> the live JobView; raises InfraUnavailable
    follow: Callable[[Any, str, dict[str, str], Any, float], Any]
    http_get: Callable[[str, float], tuple[int, str]] = field(default=lambda u, t: _get(u, t))
    readiness: Callable[[Settings], health.Report] = health.readiness


def _get(url: str, timeout: float) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (operator's URL)
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _from_check(c: health.Check, infra: bool = True) -> Row:
    return Row(c.name, c.ok, c.detail, c.remedy if not c.ok else "", infra)


def run(
    settings: Settings,
    deps: Deps,
    *,
    api: str | None = None,
    timeout: float = 120.0,
    workspace_root: Path | None = None,
) -> Report:
    """Run every check; none is skipped because an earlier one failed unless
    it cannot mean anything (no job without a broker and a store)."""
    before = deps.readiness(settings)
    pre = {c.name: c for c in before.checks}
    rows = [_from_check(pre["broker"]), _from_check(pre["store"])]
    job_id: str | None = None

    def after() -> list[Row]:
        return _api(api.rstrip("/"), deps) if api else []

    if pre["broker"].ok and pre["store"].ok:
        job_rows, job_id = _job(settings, deps, timeout, workspace_root, after)
        rows += job_rows
    else:
        rows.append(
            Row(
                "job",
                False,
                "not run: the broker or the store is down",
                "fix the rows above first",
                infra=True,
            )
        )
        rows += after()
    return Report(tuple(rows), job_id)


def _job(
    settings: Settings,
    deps: Deps,
    timeout: float,
    workspace_root: Path | None,
    after: Callable[[], list[Row]],
) -> tuple[list[Row], str | None]:
    """The job's rows, then `after`'s (the API's), while a worker started here runs."""
    base = Path(tempfile.mkdtemp(prefix="orchestrator-smoke-", dir=workspace_root))
    try:
        (base / "workspace").mkdir()
        (base / "workspace" / FILE).write_text(f"{BEFORE}\nuntouched line\n")
        spec = base / "smoke.yaml"
        spec.write_text(SPEC)
        try:
            store, job_id, tickets = deps.submit(spec, base)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a row
            infra = (
                getattr(exc, "exit_code", None) == 4
                or isinstance(exc, OSError)
                or type(exc).__name__ == "OperationalError"
            )
            return [
                Row(
                    "job",
                    False,
                    f"could not submit the job: {exc}",
                    "check the broker and the store (`orchestrator health`)"
                    if infra
                    else "check the configured policy and tier (docs/security.md)",
                    infra=infra,
                ),
                *after(),
            ], None
        proc = deps.ensure_worker(settings)
        try:
            rows = _wait_and_check(settings, deps, store, job_id, tickets, proc, timeout, base)
            rows += after()
        finally:
            if proc is not None:
                deps.stop_worker(proc)
        return rows, job_id
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _wait_and_check(
    settings: Settings,
    deps: Deps,
    store: Any,
    job_id: str,
    tickets: list[Any],
    proc: Any,
    timeout: float,
    base: Path,
) -> list[Row]:
    from orchestrator.errors import InfraUnavailable

    sid = tickets[0].session_id
    started = time.monotonic()
    try:
        live = deps.follow(store, job_id, {t.session_id: t.target for t in tickets}, proc, timeout)
    except InfraUnavailable as exc:
        return [
            Row(
                "job",
                False,
                f"job {job_id}: {exc}",
                "check that a worker runs on this broker and can reach the store "
                "(its log; `orchestrator health`)",
                infra=True,
            ),
            _workers(settings, deps),
        ]
    except Exception as exc:  # noqa: BLE001 - e.g. events this release cannot read
        return [
            Row(
                "job",
                False,
                f"job {job_id}: reading its events failed: {exc}",
                "see the error; `orchestrator doctor` checks the installation",
                infra=getattr(exc, "exit_code", None) == 4,
            ),
            _workers(settings, deps),
        ]
    took = time.monotonic() - started
    session = live.sessions.get(sid)
    rows = [_job_row(job_id, live, session, took)]
    content = (base / "workspace" / FILE).read_text()
    rows.append(
        Row(
            "result",
            content.startswith(AFTER + "\n") and "untouched line" in content,
            f"{FILE} reads {content.splitlines()[0]!r}",
            ""
            if content.startswith(AFTER)
            else "the worker did not change the workspace: it must see the same path "
            "(give --workspace-root on a folder the workers mount)",
        )
    )
    rows.append(
        _guarded(
            "replay",
            lambda: _replay_row(store, sid, session),
            f"inspect `orchestrator audit replay {sid}`",
        )
    )
    rows.append(
        _guarded(
            "verify",
            lambda: _verify_row(store, [job_id, sid]),
            "run `orchestrator audit verify` and follow docs/audit.md",
        )
    )
    rows.append(_workers(settings, deps))  # while a worker started here still runs
    return rows


def _guarded(name: str, check: Callable[[], Row], remedy: str) -> Row:
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed row
        return Row(
            name,
            False,
            f"{type(exc).__name__}: {exc}",
            remedy,
            infra=getattr(exc, "exit_code", None) == 4,
        )


def _job_row(job_id: str, live: Any, session: Any, took: float) -> Row:
    if live.job.outcome == "completed" and session is not None and session.status == "completed":
        return Row(
            "job", True, f"job {job_id} completed in {took:.1f} s ({len(session.turns)} steps)"
        )
    why = (session.error if session is not None else None) or f"job status {live.job.outcome}"
    return Row(
        "job",
        False,
        f"job {job_id} did not complete: {why}",
        f"see `orchestrator status {job_id}` and the worker's log",
    )


def _replay_row(store: Any, sid: str, live_session: Any) -> Row:
    from events.history import history
    from events.replay import replay

    full = history(store, sid)  # the whole history, from seq 1
    snap, unsnapped = replay(store, sid), replay(store, sid, use_snapshot=False)  # live parts
    problems = []
    if full.session.status != "completed":
        problems.append(f"replayed status is {full.session.status}")
    if FILE not in full.session.changed_paths:
        problems.append(f"the replay does not show {FILE} changed")
    if live_session is not None and full.session != live_session:
        problems.append("the replayed session differs from the one watched live")
    if snap != unsnapped:
        problems.append("replay from the snapshot differs from a full replay")
    refused = [e for e in full.ledger.entries if str(e.decision) != "allow"]
    if not full.ledger.entries or refused:
        problems.append(
            f"{len(refused)} of {len(full.ledger.entries)} tool call(s) were not "
            "allowed by the policy"
        )
    if problems:
        return Row(
            "replay",
            False,
            "; ".join(problems),
            f"inspect `orchestrator audit replay {sid}` and report a bug",
        )
    return Row(
        "replay",
        True,
        f"session {sid}: {full.last_seq} events fold to a completed "
        f"session with {FILE} changed; snapshot and live view agree",
    )


def _verify_row(store: Any, streams: list[str]) -> Row:
    from events import verify as verify_mod

    events, problems = 0, []
    for stream in streams:
        report = verify_mod.verify_rows(store.rows(stream))
        events += report.events
        problems += [str(p) for p in report.problems]
    if problems:
        return Row(
            "verify",
            False,
            "; ".join(problems[:3]),
            "run `orchestrator audit verify` and follow docs/audit.md",
        )
    return Row("verify", True, f"{events} events on {len(streams)} hash chains verify")


def _workers(settings: Settings, deps: Deps) -> Row:
    report = deps.readiness(settings)
    check = next(c for c in report.checks if c.name == "workers")
    return _from_check(check)


def _api(base: str, deps: Deps) -> list[Row]:
    rows = []
    for path in ("/healthz", "/readyz"):
        url = base + path
        try:
            status, body = deps.http_get(url, 5.0)
        except OSError as exc:
            rows.append(
                Row(
                    f"api {path}",
                    False,
                    f"{url}: no answer ({exc})",
                    "start the API (`orchestrator api`) or fix --api",
                    infra=True,
                )
            )
            continue
        if status == 200:
            rows.append(Row(f"api {path}", True, f"{url}: 200"))
            continue
        failed = ""
        try:
            failed = ", ".join(json.loads(body).get("failed", []))
        except (ValueError, AttributeError):
            pass
        rows.append(
            Row(
                f"api {path}",
                False,
                f"{url}: {status}" + (f" (failed: {failed})" if failed else ""),
                "the API's own checks failed: see its /readyz body and "
                "`orchestrator health` on the API's machine",
                infra=True,
            )
        )
    return rows

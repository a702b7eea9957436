"""Liveness and readiness of a deployment, for `/healthz`, `/readyz`,
`orchestrator health` and `orchestrator smoke`.

Liveness says only that the process answers. Readiness says whether work
submitted now would run: the broker is reachable, the store is reachable and
at the schema this release needs, at least one worker published a fresh
heartbeat whose own store check passed, and no job is stalled (a broker
that lost its messages: `orchestrator resume`). The store and broker checks are the
ones `doctor` runs, so the two never disagree; the JSON names the check that
failed and what to do.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.config.settings import Settings
from orchestrator.ops import doctor, heartbeat, metrics

__all__ = ["Check", "Report", "liveness", "readiness", "workers_check"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    remedy: str = ""


@dataclass(frozen=True)
class Report:
    ok: bool
    checks: tuple[Check, ...]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": [c.name for c in self.failed],
            "checks": [asdict(c) for c in self.checks],
        }


def liveness() -> dict[str, Any]:
    """No I/O: answering at all is the point."""
    return {"ok": True}


def _from_doctor(result: doctor.Result) -> Check:
    return Check(result.name, result.status in ("ok", "warn"), result.detail, result.remedy)


def workers_check(
    settings: Settings, beats: list[heartbeat.Beat] | None, now: float, problem: str | None = None
) -> Check:
    """Pure: a verdict on the beats read (None with `problem` when they could not be)."""
    if beats is None:
        return Check(
            "workers",
            False,
            f"cannot read worker heartbeats: {problem}",
            "fix the broker first (the heartbeats live there)",
        )
    live = heartbeat.fresh(beats, now, settings.worker_heartbeat_max_age_s)
    ready = [b for b in live if b.store_ok and b.broker_ok]
    if ready:
        names = ", ".join(sorted(b.hostname for b in ready))
        return Check("workers", True, f"{len(ready)} worker(s) with a fresh heartbeat: {names}")
    if live:
        what = "store" if any(not b.store_ok for b in live) else "broker"
        why = "; ".join(f"{b.hostname}: {b.detail or what + ' unreachable'}" for b in live)
        return Check(
            "workers",
            False,
            f"workers are alive but cannot reach the {what}: {why}",
            f"check ORCH_{'STORE' if what == 'store' else 'BROKER'}_URL on the "
            f"workers and that the {'database' if what == 'store' else 'broker'} "
            "is up",
        )
    stale = f" ({len(beats)} stale heartbeat(s))" if beats else ""
    return Check(
        "workers",
        False,
        f"no worker heartbeat in the last {settings.worker_heartbeat_max_age_s:g} s{stale}",
        "start workers (`orchestrator worker`, the systemd unit or the Helm "
        "worker deployment) and check their logs",
    )


def jobs_check(settings: Settings) -> Check:
    """Fails while a job is stalled (orchestrator.service.resume): its sessions
    made no progress for `stall_after_s` and nothing is running them."""
    try:
        found = metrics.jobs_stalled(settings)
    except Exception as exc:  # noqa: BLE001 - the store check names the store's trouble
        return Check("jobs", True, f"not checked: {type(exc).__name__}: {exc}")
    if not found:
        return Check("jobs", True, "no stalled job")
    ids = ", ".join(s.job_id for s in found[:5])
    return Check(
        "jobs",
        False,
        f"{len(found)} job(s) stalled (no progress for {settings.stall_after_s:g} s, "
        f"no task running them): {ids}",
        "the broker lost their messages (a restart without persistence?): "
        "`orchestrator resume JOB` for each (runbooks/oncall.md)",
    )


def _read_beats(settings: Settings) -> tuple[list[heartbeat.Beat] | None, str | None]:
    try:
        return heartbeat.read_all(settings), None
    except Exception as exc:  # noqa: BLE001  (redis raises per failure mode)
        return None, str(exc)


def readiness(settings: Settings, *, now: float | None = None) -> Report:
    """Broker, store and workers, each checked even when another failed."""
    broker = _from_doctor(doctor.check_broker(settings))
    store = _from_doctor(doctor.check_store(settings))
    beats, problem = _read_beats(settings)
    at = time.time() if now is None else now
    workers = workers_check(settings, beats, at, problem)
    checks = (broker, store, workers, jobs_check(settings))
    return Report(all(c.ok for c in checks), checks)

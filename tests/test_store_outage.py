"""A store outage over a step's end: the finished result is kept and recorded,
never thrown away as "interrupted"; an outage past the worker's patience ends
the session recorded `failed` (saying why) once the store is back, never
`running` forever.

The outage is real: a private PostgreSQL stopped and started again, or an
embedded SQLite store on a small tmpfs of the test's own filled to the last
byte and freed again (disk full, the SQLite outage an operator meets). The
durations are shrunk by settings (`record_patience_s`, `task_max_retries`,
`spool_sweep_interval_s`): a short outage is one the worker waits out, a long
one outlasts its patience and its task's retries.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.store import SqlEventStore
from orchestrator.run.runner import job_state
from tests.cli_helpers import cli, shape_env
from tests.ops_helpers import private_postgres, start_worker, stop, wait_until

pytestmark = [pytest.mark.slow]

STEP_S = 3  # the shell step (below) runs this long after the outage begins
SPEC = """
name: outage
targets: ["repo"]
steps:
  - kind: shell
    name: slow-write
    command: python3 -c "import time, pathlib; time.sleep(3); pathlib.Path('out.txt').write_text('done')"
"""
SHORT = {"ORCH_RECORD_PATIENCE_S": "300"}
LONG = {
    "ORCH_RECORD_PATIENCE_S": "1",
    "ORCH_TASK_MAX_RETRIES": "1",
    "ORCH_SPOOL_SWEEP_INTERVAL_S": "1",
}


class TmpfsStore:
    """An SQLite store alone on a 4 MiB tmpfs: `fill()` makes its disk full."""

    def __init__(self, where: Path) -> None:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        self.mount = where
        where.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], check=True)
        self.url = f"sqlite:///{where / 'events.sqlite'}"

    def fill(self) -> None:
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={self.mount / 'ballast'}", "bs=16k"], capture_output=True
        )

    def free(self) -> None:
        (self.mount / "ballast").unlink(missing_ok=True)

    def remove(self) -> None:
        subprocess.run(["umount", "-l", str(self.mount)], check=False)


@contextlib.contextmanager
def outage_store(kind: str, tmp_path: Path) -> Iterator[tuple[str, object, object]]:
    """(store URL, begin outage, end outage) for the backend `kind`."""
    if kind == "postgres":
        with private_postgres() as pg:
            yield pg.url, pg.stop, pg.start
    else:
        fs = TmpfsStore(tmp_path / "mnt")
        try:
            yield fs.url, fs.fill, fs.free
        finally:
            fs.remove()


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
@pytest.mark.parametrize("outage", ["short", "long"])
def test_a_finished_result_outlasts_a_store_outage(
    tmp_path: Path, backend: str, outage: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("x\n")
    (tmp_path / "job.yaml").write_text(SPEC)
    with outage_store(backend, tmp_path) as (url, begin, end):
        env = shape_env(
            tmp_path,
            store_url=url,
            ORCH_WORKER_HEARTBEAT_INTERVAL_S="1",
            **(SHORT if outage == "short" else LONG),
        )
        assert cli(env, "db", "upgrade").returncode == 0
        submitted = cli(env, "submit", str(tmp_path / "job.yaml"), "--base-dir", str(tmp_path))
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        store = SqlEventStore(url)
        log = tmp_path / "worker.log"
        worker = start_worker(env, log, name="outage")
        try:
            wait_until(
                "the step to start",
                lambda: any(e.type == "ToolCallStarted" for e in store.read_correlation(job_id)),
                timeout=120,
                every=0.1,
            )
            store.close()
            begin()  # type: ignore[operator]
            # Short: back while the worker waits to record. Long: past its
            # patience and its task's one retry (the result waits in the spool).
            time.sleep(STEP_S + (4 if outage == "short" else 12))
            end()  # type: ignore[operator]
            store = SqlEventStore(url)
            job = wait_until(
                "the job to finish after the store came back",
                lambda: (j := job_state(store, job_id)).status != "running" and j,
                timeout=120,
            )
        finally:
            stop(worker)
        events = list(store.read_correlation(job_id))
        types = [e.type for e in events]
        context = (types, log.read_text()[-3000:])
        if backend == "sqlite":  # the worker's log names the cause, not a pool's symptom
            assert "disk full at" in log.read_text(), context
        # Never "interrupted: the worker died": nothing died.
        assert "ToolCallFailed" not in types, context
        if outage == "short":
            # The finished command is recorded once, as completed, and applied.
            assert job.status == "completed", context
            assert types.count("ToolCallCompleted") == 1, context
            assert (repo / "out.txt").read_text() == "done"
        else:
            # Past the worker's patience: failed, saying why, nothing applied.
            assert job.status == "failed", context
            failed = next(e.payload for e in events if e.type == "SessionFailed")
            assert failed.error == "StoreUnavailable", failed
            assert "not applied" in failed.message
            assert not (repo / "out.txt").exists()
            assert not any((tmp_path / "state" / "spool").glob("*.json"))
        store.close()


def test_a_full_disk_under_the_embedded_store_is_named_and_passes(tmp_path: Path) -> None:
    """`status`, `health` and `doctor` say "disk full at PATH" while it is, and
    nothing once space is back."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "job.yaml").write_text(SPEC)
    fs = TmpfsStore(tmp_path / "mnt")
    try:
        env = shape_env(tmp_path, store_url=fs.url)
        assert cli(env, "db", "upgrade").returncode == 0
        submitted = cli(env, "submit", str(tmp_path / "job.yaml"), "--base-dir", str(tmp_path))
        job_id = submitted.stdout.strip()
        fs.fill()
        # Reads may still work (a warning beside the job) or fail too (SQLite
        # could not grow its shared memory): either way the cause is named.
        for args in (("--json",), ()):
            status = cli(env, "status", job_id, *args)
            assert "disk full at" in " ".join((status.stdout + status.stderr).split()), status
            assert "Traceback" not in status.stderr
        health = json.loads(cli(env, "health", "--json").stdout)
        assert "store" in health["failed"]
        store = next(c for c in health["checks"] if c["name"] == "store")
        assert "disk full at" in store["detail"] and "free space" in store["remedy"]
        fs.free()
        status = cli(env, "status", job_id, "--json")
        assert json.loads(status.stdout)["store_problem"] is None, status
        health = json.loads(cli(env, "health", "--json").stdout)
        assert "store" not in health["failed"], health
    finally:
        fs.remove()

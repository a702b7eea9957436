"""Two hosts, one store, one broker: workers in two network namespaces this
test makes (each with its own address on a veth link to this machine) run
against one private PostgreSQL and one private Redis. One host's link is cut
mid-job: the other host's worker sees its heartbeat go stale, takes its
session over, and the job completes with an intact log (valid chain, every
step recorded once)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_client

from events.store import SqlEventStore
from events.verify import verify_rows
from orchestrator.run.runner import job_state
from tests.cli_helpers import ROOT, cli, shape_env
from tests.ops_helpers import REDIS_SERVER, PrivatePostgres, free_port, stop, wait_until
from tests.processes import dies_with_us

pytestmark = [pytest.mark.slow]

NET = "10.241"  # this test's own links; nothing else lives there
SPEC = """
name: two-hosts
targets: ["repos/*"]
steps:
  - kind: shell
    name: slow
    command: python3 -c "import time, pathlib; time.sleep(8); pathlib.Path('out.txt').write_text('done')"
    idempotent: true
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def hosts(n: int) -> Iterator[list[tuple[str, str, str]]]:
    """n namespaces: (name, this machine's address on its link, the link's
    name on this machine)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    made = []
    try:
        for i in range(1, n + 1):
            ns, host_if, ns_if = f"orch{i}-{os.getpid()}", f"oh{i}-{os.getpid()}", f"on{i}"
            _ip("netns", "add", ns)
            made.append((ns, host_if))
            _ip("link", "add", host_if[:15], "type", "veth", "peer", "name", ns_if)
            _ip("link", "set", ns_if, "netns", ns)
            _ip("addr", "add", f"{NET}.{i}.1/24", "dev", host_if[:15])
            _ip("link", "set", host_if[:15], "up")
            _ip("-n", ns, "addr", "add", f"{NET}.{i}.2/24", "dev", ns_if)
            _ip("-n", ns, "link", "set", ns_if, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield [(ns, f"{NET}.{i}.1", h[:15]) for i, (ns, h) in enumerate(made, start=1)]
    finally:
        for ns, host_if in made:
            subprocess.run(["ip", "link", "del", host_if[:15]], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class ReachablePostgres(PrivatePostgres):
    """The private cluster, listening on the hosts' links too."""

    def __init__(self, addresses: list[str]) -> None:
        super().__init__(listen=tuple(addresses))
        hba = Path(self.data) / "pg_hba.conf"
        hba.write_text(hba.read_text() + f"host all all {NET}.0.0/16 trust\n")


def _worker(ns: str, env: dict[str, str], log: Path, name: str) -> subprocess.Popen[bytes]:
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "celery", "-A", "tasks.app"]
    cmd += ["worker", "--pool", "prefork", "--concurrency", "1", "--queues", "orchestrator"]
    cmd += ["--loglevel", "INFO", "--hostname", f"{name}@%h", "--without-mingle"]
    cmd += ["--without-gossip"]
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=dies_with_us(),
    )


def test_a_job_completes_on_the_other_host_when_one_loses_its_link(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / "repos" / name).mkdir(parents=True)
        (tmp_path / "repos" / name / "README").write_text("x\n")
    (tmp_path / "job.yaml").write_text(SPEC)
    with hosts(2) as links:
        addresses = [addr for _, addr, _ in links]
        pg = ReachablePostgres(addresses)
        rport = free_port()
        redis = subprocess.Popen(
            [REDIS_SERVER, "--port", str(rport), "--bind", " ".join(["127.0.0.1", *addresses])]
            + ["--save", "", "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
        )
        workers: dict[str, subprocess.Popen[bytes]] = {}
        try:
            pg.start()
            wait_until("redis", lambda: redis_client.Redis(port=rport).ping(), timeout=20)
            tuning = {
                "ORCH_WORKER_HEARTBEAT_INTERVAL_S": "2",
                "ORCH_WORKER_HEARTBEAT_MAX_AGE_S": "8",
            }
            here = shape_env(
                tmp_path, store_url=pg.url, broker_url=f"redis://127.0.0.1:{rport}/0", **tuning
            )
            assert cli(here, "db", "upgrade").returncode == 0
            for i, (ns, addr, _) in enumerate(links):
                env = shape_env(
                    tmp_path / f"host{i}",
                    store_url=f"postgresql://postgres@{addr}:{pg.port}/postgres",
                    broker_url=f"redis://{addr}:{rport}/0",
                    **tuning,
                )
                workers[ns] = _worker(ns, env, tmp_path / f"{ns}.log", f"host{i}")
            submitted = cli(here, "submit", str(tmp_path / "job.yaml"), "--base-dir", str(tmp_path))
            assert submitted.returncode == 0, submitted.stderr
            job_id = submitted.stdout.strip()
            store = SqlEventStore(pg.url)
            started = wait_until(
                "a step to start",
                lambda: [e for e in store.read_correlation(job_id) if e.type == "ToolCallStarted"],
                timeout=120,
            )
            # Cut the link of the host that runs the first step to start.
            actor = started[0].actor  # worker:HOSTNAME:PID, HOSTNAME shared by the namespaces
            victim = next(ns for ns, _, _ in links if _runs_in(ns, int(actor.rsplit(":", 1)[1])))
            cut = next(h for ns, _, h in links if ns == victim)
            _ip("link", "set", cut, "down")
            wait_until(
                "the job to complete on the other host",
                lambda: job_state(store, job_id).status == "completed",
                timeout=240,
                every=0.5,
            )
            events = list(store.read_correlation(job_id))
            assert [e.type for e in events].count("ToolCallCompleted") == 2
            assert verify_rows(store.rows()).ok
            for name in ("a", "b"):
                assert (tmp_path / "repos" / name / "out.txt").read_text() == "done"
            store.close()
        finally:
            for proc in workers.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                stop(proc, timeout=5)
            redis.terminate()
            redis.wait(10)
            pg.remove()


def _runs_in(ns: str, pid: int) -> bool:
    """Whether process `pid` lives in network namespace `ns`."""
    found = subprocess.run(
        ["ip", "netns", "identify", str(pid)], capture_output=True, text=True, timeout=10
    ).stdout.split()
    return ns in found

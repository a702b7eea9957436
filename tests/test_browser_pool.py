"""The browser pool: bounds, recycling, cleanup, and no Chromium outliving a
worker killed with SIGKILL (a real prefork worker on the local Redis, db 4)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.guard.policy import Network
from orchestrator.tools.web.browser_pool import (
    BrowserPool,
    PoolConfig,
    marked_processes,
    read_states,
    reap_orphans,
)
from tests.browser_helpers import html, serve
from tests.cli_helpers import with_env

pytestmark = pytest.mark.skipif(
    not os.path.exists("/usr/bin/chromium"), reason="needs the system Chromium"
)

NET = Network(enabled=True, allow_private=("127.0.0.1",))
ROOT = Path(__file__).resolve().parent.parent


def until(cond: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _title(lease: Any) -> str:
    await lease.page.goto("about:blank")
    return "ok"


def test_a_full_pool_makes_callers_wait_and_counts_it(tmp_path: Path) -> None:
    pool = BrowserPool(PoolConfig(size=1, state_dir=tmp_path))

    async def slow(lease: Any) -> int:
        await asyncio.sleep(0.5)
        return lease.instance

    try:
        got: list[int] = []
        threads = [
            threading.Thread(target=lambda: got.append(pool.run(slow, net=NET))) for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        state = pool.snapshot()
        assert got == [0, 0] and state.waits == 1 and state.launches == 1
        assert [s.calls for s in read_states(tmp_path)] == [2]
    finally:
        pool.close()


def test_an_instance_is_recycled_after_max_uses(tmp_path: Path) -> None:
    pool = BrowserPool(PoolConfig(size=1, max_uses=2, state_dir=tmp_path))
    try:
        for _ in range(3):
            assert pool.run(_title, net=NET) == "ok"
        pool.settle()
        state = pool.snapshot()
        assert (state.launches, state.recycles, state.crashes) == (2, 1, 0)
    finally:
        pool.close()
    assert not marked_processes(f"{os.getpid()}.")


def test_a_chromium_that_cannot_start_is_a_clear_transient_error(tmp_path: Path) -> None:
    from orchestrator.tools.web.browser_pool import BrowserUnavailable

    pool = BrowserPool(PoolConfig(size=1, executable=tmp_path / "no-chromium", state_dir=tmp_path))
    try:
        with pytest.raises(BrowserUnavailable, match="never downloaded") as exc:
            pool.run(_title, net=NET)
        assert exc.value.transient and pool.snapshot().crashes == 1
    finally:
        pool.close()


@pytest.fixture
def redis_db4() -> None:
    import redis

    try:
        redis.Redis(db=4, socket_connect_timeout=1).ping()
    except redis.RedisError:
        if os.environ.get("ORCH_REQUIRE_SERVICES"):
            raise
        pytest.skip("no Redis on 127.0.0.1:6379")


def test_a_worker_killed_while_holding_browsers_leaves_no_chromium(
    tmp_path: Path, redis_db4: None
) -> None:
    from tests.browser_worker_app import hold

    queue = f"browser-test-{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    env = {**os.environ, "ORCH_STATE_DIR": str(state), "ORCH_BROWSER_POOL_SIZE": "2"}
    mark = f"ORCH_STATE_DIR={state}"  # everything the worker starts inherits it
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.browser_worker_app",
            "worker",
            "--pool",
            "prefork",
            "-c",
            "1",
            "-Q",
            queue,
            "-l",
            "warning",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with serve("127.0.0.1", {"/": html("<p>held</p>")}) as site:
            hold.apply_async((site.url("/"), 120, 2), queue=queue)
            # Two Chromiums, each with its renderers, all marked with the child's pid.
            owners = until(
                lambda: (
                    {
                        v.split(".")[0]
                        for v in marked_processes().values()
                        if int(v.split(".")[0]) in _children(worker.pid)
                        and len(_instances(v.split(".")[0])) == 2
                    }
                    or None
                ),
                60,
                "the worker's child to hold two browsers",
            )
            (child,) = owners
            assert len(with_env(mark)) > 3  # worker, child, driver, browsers
            os.kill(int(child), signal.SIGKILL)
            until(
                lambda: not marked_processes(f"{child}."), 15, "the killed child's browsers to exit"
            )
            until(
                lambda: set(with_env(mark)) <= {worker.pid, *_children(worker.pid)},
                15,
                "only the worker and its new child to remain",
            )
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
        _purge(queue)
    assert with_env(mark) == [], "a process the worker started outlived it"


def _children(pid: int) -> set[int]:
    kids = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        kids.add(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def _instances(owner: str) -> set[str]:
    return {v.split(".")[2] for v in marked_processes(f"{owner}.").values()}


def _purge(queue: str) -> None:
    import redis

    redis.Redis(db=4).delete(queue)


def test_a_pool_start_kills_browsers_whose_owner_is_gone_and_no_others(tmp_path: Path) -> None:
    # A process marked as owned by a pid that no longer exists stands for a
    # browser left by a SIGKILLed worker; one owned by us is left alone.
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = subprocess.Popen(["sleep", "60"], env={"ORCH_BROWSER_OWNER": f"{dead.pid}.1.0.1"})
    mine = BrowserPool(PoolConfig(size=1, state_dir=tmp_path))
    try:
        assert mine.run(_title, net=NET) == "ok"  # a pool's start reaps
        assert orphan.wait(5) == -signal.SIGKILL
        assert reap_orphans() == 0
        assert marked_processes(f"{os.getpid()}."), "the reaper killed a live pool's browser"
    finally:
        if orphan.poll() is None:
            orphan.kill()
        mine.close()

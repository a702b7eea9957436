"""A bounded pool of Chromium instances per worker process.

    pool = get_pool(PoolConfig.from_settings(settings))  # this process's pool
    text = pool.run(read_body, net=session_net, timeout_s=20)

`run(fn, net=..., timeout_s=...)` waits for a free instance, gives `fn` a
`Lease` (a fresh browser context and page, whose egress is the session's
`net`: orchestrator.tools.web.browser_proxy), and returns what `fn` returns. The context
is closed after every call, so no cookies, storage or cache pass from one call
to the next; an instance is recycled (closed, its processes killed) after
`browser_max_uses` calls, after a call that timed out, and when Chromium
disconnects (a crash) or fails to launch.

Why the async API on a private thread: Celery's prefork children run task
code on the main thread, but the threads and solo pools, the chat loop and
the tests call from other threads, and the sync API binds every object to the
thread that made it and cannot stop a call stuck in Chromium (a page running
`while(true){}` never answers `evaluate`). One event loop in one daemon
thread owns Playwright and every browser; callers in any thread submit a
coroutine and wait on its future with the call's deadline. A call past its
deadline is cancelled on the loop and its instance recycled, so the caller
always gets its answer (or ToolTimeout) on time, and N instances serve N
concurrent callers from one loop.

No Chromium outlives its worker:
- every Chromium is started with `ORCH_BROWSER_OWNER=<pid>.<start>.<id>` in
  its environment (renderers and helpers inherit it); recycling kills every
  process carrying the instance's marker;
- `close()` runs on task end (`settle`), on Celery's `worker_process_shutdown`
  and `worker_shutdown` (tasks.browser_hooks) and at exit (atexit);
- a worker killed with SIGKILL runs none of that: Playwright's driver sees its
  pipe close and kills its browsers, and `reap_orphans()` (at every pool
  start, on `worker_process_init` and on worker shutdown) kills marked
  processes whose owner is gone, should any survive.

`pool_state()` and `read_states()` report what doctor and the metrics show.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from orchestrator import lazy
from orchestrator.errors import ToolError, ToolTimeout
from orchestrator.ops.observer import NO_OBSERVER, Observer
from orchestrator.tools.web.browser_proxy import DEAD_PROXY, Guard

__all__ = [
    "PoolConfig",
    "PoolState",
    "Lease",
    "BrowserPool",
    "BrowserUnavailable",
    "get_pool",
    "close_pool",
    "settle_pool",
    "pool_state",
    "read_states",
    "reap_orphans",
    "orphans",
    "describe",
    "marked_processes",
    "MARKER_VAR",
    "CHROMIUM_ARGS",
]

T = TypeVar("T")
MARKER_VAR = "ORCH_BROWSER_OWNER"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--disable-client-side-phishing-detection",
    "--disable-domain-reliability",
    "--disable-features=Translate,MediaRouter,AutofillServerCommunication,"
    "OptimizationHints,InterestFeedContentSuggestions",
    "--no-default-browser-check",
)
_CLOSE_TIMEOUT_S = 5.0


class BrowserUnavailable(ToolError):
    """Chromium did not start (missing, broken, or past the launch timeout)."""

    transient = True
    retry_after_s = 5.0


@dataclass(frozen=True)
class PoolConfig:
    executable: Path = Path("/usr/bin/chromium")
    size: int = 2
    max_uses: int = 50
    call_timeout_s: float = 30.0
    launch_timeout_s: float = 20.0
    state_dir: Path | None = None  # where pool states are written for doctor

    @classmethod
    def from_settings(cls, s: Any) -> PoolConfig:
        return cls(
            executable=s.browser_executable,
            size=s.browser_pool_size,
            max_uses=s.browser_max_uses,
            call_timeout_s=s.browser_call_timeout_s,
            launch_timeout_s=s.browser_launch_timeout_s,
            state_dir=s.state,
        )


@dataclass
class PoolState:
    pid: int
    size: int
    launched: int = 0  # instances running now
    in_use: int = 0
    calls: int = 0
    waits: int = 0  # calls that found every instance busy
    wait_s: float = 0.0  # total time spent waiting for an instance
    launches: int = 0
    crashes: int = 0  # disconnects and failed launches
    recycles: int = 0  # instances closed after max uses, a timeout or a crash
    timeouts: int = 0
    updated_at: float = 0.0


@dataclass
class Lease:
    """One call's fresh context and page; `guard` is its egress (blocked requests)."""

    context: Any
    page: Any
    guard: Any
    instance: int


# -- processes we started ------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _owner_tag(pid: int) -> str:
    return f"{pid}.{_start_time(pid) or 0}"


def marked_processes(prefix: str = "") -> dict[int, str]:
    """pid -> marker value of every live process carrying MARKER_VAR (whose
    value starts with `prefix`). A process can erase its own environment;
    Chromium does not."""
    needle = f"{MARKER_VAR}={prefix}".encode()
    found: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        for var in env.split(b"\0"):
            if var.startswith(needle):
                found[int(entry.name)] = var.split(b"=", 1)[1].decode(errors="replace")
                break
    return found


def _kill(pids: dict[int, str]) -> int:
    killed = 0
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def orphans() -> dict[int, str]:
    """Marked browser processes whose owning process is gone."""
    found = {}
    for pid, value in marked_processes().items():
        owner, _, rest = value.partition(".")
        start = rest.split(".", 1)[0]
        if not owner.isdigit() or _start_time(int(owner)) != start:
            found[pid] = value
    return found


def reap_orphans() -> int:
    """Kill marked browser processes whose owning process is gone; how many."""
    return _kill(orphans())


# -- the pool ------------------------------------------------------------------------


@dataclass
class _Instance:
    index: int
    browser: Any = None
    marker: str = ""
    uses: int = 0
    tainted: bool = False  # recycle at release (timeout, crash, close failure)
    closing: bool = False
    spare: asyncio.Task[Lease] | None = None


@dataclass
class _Loop:
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread


class BrowserPool:
    """See the module docstring. Thread-safe; one per process (`get_pool`)."""

    def __init__(self, config: PoolConfig, observer: Observer = NO_OBSERVER) -> None:
        self.config = config
        self.observer = observer
        self.pid = os.getpid()
        self._tag = _owner_tag(self.pid)
        self._gen = itertools.count(1)
        self._lock = threading.Lock()
        self._runner: _Loop | None = None
        self._pw: Any = None
        self._all = [_Instance(i) for i in range(config.size)]
        self._idle: list[_Instance] = list(self._all)
        self._cond: asyncio.Condition | None = None
        self._cleanups: set[asyncio.Task[None]] = set()
        self._closed = False
        self.state = PoolState(pid=self.pid, size=config.size)

    # -- the caller's side (any thread) ----------------------------------------------

    def run(
        self,
        fn: Callable[[Lease], Awaitable[T]],
        *,
        net: Any,
        timeout_s: float | None = None,
        max_bytes: int = 50 * 1024 * 1024,
    ) -> T:
        """`fn(lease)` on a fresh context of a free instance, within `timeout_s`
        (default: browser_call_timeout_s) counted from now, waiting included.
        ToolTimeout past it; BrowserUnavailable when Chromium does not start."""
        timeout = timeout_s or self.config.call_timeout_s
        runner = self._ensure_loop()
        if threading.current_thread() is runner.thread:
            raise RuntimeError("BrowserPool.run was called from the pool's own loop")
        fut = asyncio.run_coroutine_threadsafe(self._call(fn, net, timeout, max_bytes), runner.loop)
        try:
            # The loop enforces the deadline; the margin covers a loop that is late.
            return fut.result(timeout=timeout + _CLOSE_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise ToolTimeout(
                f"browser call did not finish within {timeout:g} s; the page "
                "was closed. Raise the step's timeout_s or simplify the "
                "page's actions."
            ) from None
        except BaseException:
            fut.cancel()  # Celery's soft time limit lands here: stop the call too
            raise

    def settle(self, timeout_s: float = _CLOSE_TIMEOUT_S) -> None:
        """Wait until every finished call's context is closed (task end)."""
        runner = self._runner
        if runner is None or self._closed or not runner.thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._settle(), runner.loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Close every context and instance, stop Playwright and the loop, and
        kill whatever still carries one of our markers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            runner = self._runner
        if runner is not None and runner.thread.is_alive() and os.getpid() == self.pid:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), runner.loop)
            with contextlib.suppress(Exception):
                fut.result(timeout=timeout_s)
            runner.loop.call_soon_threadsafe(runner.loop.stop)
            runner.thread.join(timeout=2.0)
        if os.getpid() == self.pid:
            _kill(marked_processes(self._tag + "."))
        self.state.launched = self.state.in_use = 0
        self._publish()

    def snapshot(self) -> PoolState:
        return PoolState(**asdict(self.state))

    # -- the loop's side ---------------------------------------------------------------

    def _ensure_loop(self) -> _Loop:
        with self._lock:
            if self._closed:
                raise BrowserUnavailable("the browser pool is closed (the worker is stopping)")
            if self._runner is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="browser-pool", daemon=True)
                thread.start()
                self._runner = _Loop(loop, thread)
                reap_orphans()
            return self._runner

    async def _call(
        self, fn: Callable[[Lease], Awaitable[T]], net: Any, timeout: float, max_bytes: int
    ) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.state.calls += 1
        inst: _Instance | None = None
        lease: Lease | None = None
        try:
            async with asyncio.timeout_at(deadline):
                inst = await self._acquire()
                lease = await self._take(inst, deadline)
                lease.guard.bind(net, max_bytes)
                return await fn(lease)
        except TimeoutError:
            self.state.timeouts += 1
            if inst is not None:
                inst.tainted = True
            raise ToolTimeout(
                f"browser call did not finish within {timeout:g} s (waiting "
                "for a browser, loading or an action); the instance is "
                "recycled. Raise the step's timeout_s, or wait for a selector "
                "that appears sooner."
            ) from None
        except Exception:
            if inst is not None and not _connected(inst):
                inst.tainted = True
            raise
        finally:
            if inst is not None:
                task = asyncio.ensure_future(self._release(inst, lease))
                self._cleanups.add(task)
                task.add_done_callback(self._cleanups.discard)

    async def _acquire(self) -> _Instance:
        if self._cond is None:
            self._cond = asyncio.Condition()
        async with self._cond:
            if not self._free():
                self.state.waits += 1
                started = time.monotonic()
                try:
                    await self._cond.wait_for(self._free)
                finally:
                    self.state.wait_s += time.monotonic() - started
            # Prefer a running instance over launching another.
            inst = next((i for i in self._idle if i.browser is not None), None) or self._idle[0]
            self._idle.remove(inst)
            self.state.in_use += 1
            self._publish()
            return inst

    def _free(self) -> bool:
        return bool(self._idle)

    async def _take(self, inst: _Instance, deadline: float) -> Lease:
        if inst.browser is not None and not _runs(inst):
            # Its processes are gone (killed, out of memory) and the disconnect
            # event has not come yet: a spare context on it would hang the
            # call until its timeout.
            inst.tainted = True
        if not _connected(inst):
            if inst.browser is not None:  # died while idle
                self.state.crashes += 1
                await self._recycle(inst)
            await self._launch(inst)
        spare, inst.spare = inst.spare, None
        if spare is not None:
            try:
                return await spare
            except Exception:
                pass  # a broken spare: make a context now
        try:
            return await self._new_lease(inst)
        except Exception:
            if _alive(inst):
                raise
        # Chromium died since the last call (before its disconnect event came).
        self.state.crashes += 1
        await self._recycle(inst)
        await self._launch(inst)
        return await self._new_lease(inst)

    async def _launch(self, inst: _Instance) -> None:
        if self._pw is None:
            # playwright is optional: a build without it has no browser tool.
            self._pw = await lazy.module("playwright.async_api").async_playwright().start()
        inst.marker = f"{self._tag}.{inst.index}.{next(self._gen)}"
        env = {k: v for k, v in os.environ.items() if k != MARKER_VAR}
        env[MARKER_VAR] = inst.marker
        self.state.launches += 1
        try:
            browser = await asyncio.wait_for(
                self._pw.chromium.launch(
                    executable_path=str(self.config.executable),
                    args=list(CHROMIUM_ARGS),
                    env=env,
                    proxy={"server": DEAD_PROXY},
                    handle_sigint=False,
                    handle_sigterm=False,
                    handle_sighup=False,
                    timeout=self.config.launch_timeout_s * 1000,
                ),
                self.config.launch_timeout_s + 2,
            )
        except Exception as exc:
            self.state.crashes += 1
            _kill(marked_processes(inst.marker))
            raise BrowserUnavailable(
                f"Chromium at {self.config.executable} did not start: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. Install "
                "it (apt-get install chromium) or set ORCH_BROWSER_EXECUTABLE; the "
                "browser is never downloaded."
            ) from None
        inst.browser, inst.uses, inst.tainted, inst.closing = browser, 0, False, False

        def disconnected(_: Any, inst: _Instance = inst, browser: Any = browser) -> None:
            if inst.browser is browser and not inst.closing:
                inst.tainted = True

        browser.on("disconnected", disconnected)
        self.state.launched += 1
        self._publish()

    async def _new_lease(self, inst: _Instance) -> Lease:
        guard = Guard()
        proxy = await guard.start()
        try:
            context = await inst.browser.new_context(
                proxy={"server": proxy},
                service_workers="block",
                accept_downloads=False,
                ignore_https_errors=False,
                java_script_enabled=True,
                viewport={"width": 1280, "height": 800},
            )
            await context.route("**/*", guard.route)
            page = await context.new_page()
        except BaseException:
            await guard.close()
            raise
        # Popups and new tabs are closed as they open: a call sees one page.
        context.on("page", lambda p: asyncio.ensure_future(_close_quietly(p)))
        return Lease(context, page, guard, inst.index)

    async def _release(self, inst: _Instance, lease: Lease | None) -> None:
        try:
            if lease is not None:
                try:
                    await asyncio.wait_for(lease.context.close(), _CLOSE_TIMEOUT_S)
                except Exception:
                    inst.tainted = True
                finally:
                    await lease.guard.close()
            inst.uses += 1
            if inst.browser is not None and (
                inst.tainted or not _connected(inst) or inst.uses >= self.config.max_uses
            ):
                if not _alive(inst):
                    self.state.crashes += 1
                await self._recycle(inst)
            if inst.browser is not None and not self._closed:
                inst.spare = asyncio.ensure_future(self._new_lease(inst))
        finally:
            self.state.in_use -= 1
            assert self._cond is not None
            async with self._cond:
                self._idle.append(inst)
                self._cond.notify()
            self._publish()

    async def _recycle(self, inst: _Instance) -> None:
        browser, marker = inst.browser, inst.marker
        inst.browser, inst.closing = None, True
        if inst.spare is not None:
            inst.spare.cancel()
            inst.spare = None
        self.state.recycles += 1
        self.state.launched -= 1
        with contextlib.suppress(Exception):
            await asyncio.wait_for(browser.close(), _CLOSE_TIMEOUT_S)
        _kill(marked_processes(marker))  # a hung renderer ignores Browser.close
        self._publish()

    async def _settle(self) -> None:
        while self._cleanups:
            await asyncio.gather(*list(self._cleanups), return_exceptions=True)

    async def _shutdown(self) -> None:
        await self._settle()
        for inst in self._all:
            if inst.spare is not None:
                inst.spare.cancel()
            if inst.browser is not None:
                inst.closing = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(inst.browser.close(), _CLOSE_TIMEOUT_S)
                inst.browser = None
        if self._pw is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pw.stop(), _CLOSE_TIMEOUT_S)
            self._pw = None

    def _publish(self) -> None:
        self.state.updated_at = time.time()
        _write_state(self.config.state_dir, self.state)
        _report(self.observer, self.state)


def _runs(inst: _Instance) -> bool:
    """Whether a process of the instance's own still runs (one /proc scan)."""
    return inst.marker in marked_processes(inst.marker).values()


def _alive(inst: _Instance) -> bool:
    try:
        return bool(inst.browser is not None and inst.browser.is_connected())
    except Exception:
        return False


def _connected(inst: _Instance) -> bool:
    return _alive(inst) and not inst.tainted


async def _close_quietly(page: Any) -> None:
    with contextlib.suppress(Exception):
        await page.close()


# -- state for doctor and metrics ----------------------------------------------------


def _state_folder(state_dir: Path | None) -> Path | None:
    return None if state_dir is None else state_dir / "browser_pool"


def _write_state(state_dir: Path | None, state: PoolState) -> None:
    folder = _state_folder(state_dir)
    if folder is None:
        return
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{state.pid}.tmp"
        tmp.write_text(json.dumps(asdict(state)))
        os.replace(tmp, folder / f"{state.pid}.json")


def read_states(state_dir: Path) -> list[PoolState]:
    """The pools of live processes under `state_dir` (read only: files of
    dead processes are skipped, not removed)."""
    folder = _state_folder(state_dir)
    states: list[PoolState] = []
    if folder is None or not folder.is_dir():
        return states
    for path in folder.glob("*.json"):
        try:
            state = PoolState(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if _start_time(state.pid) is None:
            continue
        states.append(state)
    return states


def describe(state_dir: Path) -> tuple[str, int]:
    """One line on the pools of the workers under `state_dir`, and how many
    orphaned browser processes run on this machine (for doctor)."""
    states = read_states(state_dir)
    left = len(orphans())
    if states:
        t = {
            k: sum(getattr(st, k) for st in states)
            for k in (
                "size",
                "launched",
                "in_use",
                "calls",
                "waits",
                "crashes",
                "recycles",
                "timeouts",
            )
        }
        line = (
            f"{len(states)} worker pool(s): {t['launched']}/{t['size']} running, "
            f"{t['in_use']} in use, {t['calls']} calls, {t['waits']} waited, "
            f"{t['crashes']} crashes, {t['recycles']} recycles, {t['timeouts']} timeouts"
        )
    else:
        line = "no worker has started a browser pool yet"
    if left:
        line += f"; {left} orphaned browser process(es)"
    return line, left


def _report(observer: Observer, state: PoolState) -> None:
    """The browser-pool gauge: instances in use and idle in this process."""
    with contextlib.suppress(Exception):  # metrics never break a browser call
        observer.browser_pool("in_use", state.in_use)
        observer.browser_pool("idle", state.launched - state.in_use)


# -- the process's pool ---------------------------------------------------------------

_pool: BrowserPool | None = None
_pool_lock = threading.Lock()


def get_pool(config: PoolConfig | None = None, observer: Observer = NO_OBSERVER) -> BrowserPool:
    """This process's pool, made with `config` (PoolConfig.from_settings; the
    defaults without) on first use; a forked child gets its own, never its
    parent's."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid() or _pool._closed:
            _pool = BrowserPool(config or PoolConfig(), observer)
        return _pool


def pool_state() -> PoolState | None:
    """This process's pool state, or None when it has no pool."""
    pool = _pool
    return pool.snapshot() if pool is not None and pool.pid == os.getpid() else None


def settle_pool() -> None:
    pool = _pool
    if pool is not None and pool.pid == os.getpid():
        pool.settle()


def close_pool() -> None:
    """Close this process's pool, if it has one (shutdown hooks, atexit)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


def _forget_after_fork() -> None:
    # The child has no copy of the loop thread; the parent's browsers are the
    # parent's to close. get_pool() makes a new pool here on first use.
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(close_pool)

"""A Celery app for tests/test_browser_pool.py: one task that holds browsers.

Its worker runs with the real browser hooks (tasks.browser_hooks) on the
local Redis, db 4, on a queue the test names.
"""

from __future__ import annotations

import asyncio
import threading

from celery import Celery

import tasks.browser_hooks  # noqa: F401  (the hooks under test)

REDIS_DB = 4  # its own (tests/test_redis_dbs.py)
URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
app = Celery("browser-test", broker=URL, backend=URL)
app.conf.update(
    task_acks_late=True, worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True
)


@app.task(name="browser_test.hold")
def hold(url: str, seconds: float, browsers: int) -> list[str]:
    """Open `url` in `browsers` pooled browsers at once and keep them open."""
    from orchestrator.config.settings import get_settings
    from orchestrator.guard.policy import Network
    from orchestrator.tools.web.browser_pool import PoolConfig, get_pool

    net = Network(enabled=True, allow_private=("127.0.0.1",))

    async def keep(lease: object) -> str:
        await lease.page.goto(url)  # type: ignore[attr-defined]
        await asyncio.sleep(seconds)
        return "held"

    out: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: out.append(
                get_pool(PoolConfig.from_settings(get_settings())).run(
                    keep, net=net, timeout_s=seconds + 30
                )
            )
        )
        for _ in range(browsers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out

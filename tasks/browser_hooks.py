"""Celery signals that keep browsers from outliving their task or worker.

- task_postrun: wait until the finished task's browser contexts are closed;
- worker_process_init (a new prefork child): kill browsers left by a child
  that died without cleaning up (SIGKILL, OOM);
- worker_process_shutdown (a child stopping) and worker_shutdown (the main
  process, after its children): close this process's pool, then reap.

orchestrator.tools.web.browser_pool explains the markers and the atexit hook; tasks.app
imports this module so every worker connects the hooks.
"""

from __future__ import annotations

from typing import Any

from celery.signals import (
    task_postrun,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from orchestrator.tools.web import browser_pool


@task_postrun.connect(weak=False)
def _settle_browsers(**_: Any) -> None:
    browser_pool.settle_pool()


@worker_process_init.connect(weak=False)
def _reap_on_child_start(**_: Any) -> None:
    browser_pool.reap_orphans()


@worker_process_shutdown.connect(weak=False)
def _close_on_child_exit(**_: Any) -> None:
    browser_pool.close_pool()


@worker_shutdown.connect(weak=False)
def _close_on_worker_exit(**_: Any) -> None:
    browser_pool.close_pool()
    browser_pool.reap_orphans()

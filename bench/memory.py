"""Worker memory over repeated large jobs: does a worker grow with what it ran?

A real `celery worker` of our app (embedded shape: SQLite store, broker and
results; 2 prefork processes, as `orchestrator run` starts it) runs a warm-up
job, then JOBS back-to-back jobs of TARGETS targets each (one small file per
target, one `replace` step: the batch shape). After each job the resident
set (VmRSS from /proc) of the worker's main process and of each pool process
is read, after the job's JobCompleted is stored.

Figure: the growth of the total RSS from after the first timed job to after
the last (the first job fills what is bounded: the runner's fold cache, the
store's statement cache), and the largest growth from one job to the next.
Target: <= 2% (issue 18: flat over three back-to-back 1,000-target jobs).
A worker that keeps something per session or per job (a cache keyed by
session, Celery result objects, key registries) fails it.

The peer is the same worker after its first job: what is measured is growth,
so the ratio is the figure. `--quick` runs 300-target jobs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.batch import BATCH, Ours
from bench.common import Options, Result, show

JOBS = 3
TARGETS = 1000
TARGET_GROWTH = 0.02
MEMORY = BATCH.parent / "memory"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def worker_rss(pid: int) -> tuple[int, list[int]]:
    """(main process KiB, each pool process KiB) of the worker `pid`."""
    return _rss_kib(pid), sorted(_rss_kib(c) for c in _children(pid))


def _targets(root: Path, n: int) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    for i in range(n):
        repo = root / f"r{i:04d}"
        repo.mkdir(parents=True)
        (repo / "mod.py").write_text("import os\n\nvalue = getattr(os, 'sep')\n")
    return root


def run(opts: Options) -> Result:
    res = Result("memory")
    targets = 300 if opts.quick else TARGETS
    shutil.rmtree(MEMORY / "state", ignore_errors=True)
    shape = Ours("ours, embedded", MEMORY / "state", None, None, None)
    print(
        "contenders: the same worker after job 1 (peer) and after each later job; "
        "store SQLite WAL synchronous=FULL, 1 round of "
        f"{JOBS} jobs x {targets} targets"
    )
    rows: list[tuple[Any, ...]] = []
    totals: list[int] = []
    try:
        with shape.worker() as proc:
            shape.submit_and_wait(_targets(MEMORY / "warm", 20), timeout=300)
            for k in range(JOBS):
                work = _targets(MEMORY / "work", targets)
                dt, status, _ = shape.submit_and_wait(work, timeout=1800)
                main, pool = worker_rss(proc.pid)
                total = main + sum(pool)
                totals.append(total)
                growth = (total / totals[0] - 1) * 100
                rows.append(
                    (
                        k + 1,
                        status,
                        f"{dt:.1f}",
                        main // 1024,
                        [p // 1024 for p in pool],
                        total // 1024,
                        f"{growth:+.2f}%",
                    )
                )
                print(f"  job {k + 1}: {status}, {dt:.1f} s, RSS {total // 1024} MiB", flush=True)
    finally:
        shape.store.close()
    show(
        f"[memory] worker RSS after each of {JOBS} back-to-back {targets}-target jobs "
        "(embedded shape, 2 pool processes)",
        ("job", "status", "wall s", "main MiB", "pool MiB", "total MiB", "vs job 1"),
        rows,
    )
    first_to_last = totals[-1] / totals[0] - 1
    step = max(b / a - 1 for a, b in zip(totals, totals[1:]))
    res.figures = {"targets": targets, "jobs": JOBS, "rss_kib": totals}
    res.target(
        "worker RSS growth, job 1 -> job 3",
        f"<= {TARGET_GROWTH:.0%}",
        f"{first_to_last * 100:+.2f}%",
        first_to_last <= TARGET_GROWTH,
    )
    res.target(
        "worker RSS growth, largest job to job",
        f"<= {TARGET_GROWTH:.0%}",
        f"{step * 100:+.2f}%",
        step <= TARGET_GROWTH,
    )
    res.print_targets()
    return res

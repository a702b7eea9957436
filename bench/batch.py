"""Batch regex replace across a real corpus: our job vs a process pool vs rg | sed.

The corpus is the installed CPython standard library (its .py files, without
`site-packages` and the test folders, and without the few files that are not
UTF-8 text), copied several times and cut into fake repositories of about 23
files each: about 7,400 files in 320 repositories (a quarter with --quick).
It is built once under bench/.cache/batch/pristine; before every contender a
fresh copy is made (`cp -r`, outside the timer) and after it the digest of
every file is compared across contenders: all must leave identical trees.

The replacement renames a common builtin call: `\\bgetattr\\(` -> `safe_getattr(`,
about 4,000 replacements in a fifth of the files (a realistic rename: most
files untouched, the changed ones changed in a few places).

- ours: a real job, as `orchestrator run` submits it: a JobSpec with one
  `replace` step and every repository as a target, `jobs.prepare` /
  `jobs.record` then `tasks.dispatch.enqueue`, executed by a real
  `celery worker` of our app with 2 prefork processes (started and warmed
  with a one-target job outside the timer). Timed from submit to JobCompleted
  in the event store (polled every 5 ms). Two shapes: the embedded default
  (SQLite store, `orchsqla` SQLite broker, SQLite results) and production
  (Redis broker and results, PostgreSQL store). Each changed file is written
  atomically (temp file, made durable, rename) and its diff and hashes
  recorded; a chunk of sessions stores each phase in one transaction (group
  commit) and makes its renames durable by one file-system sync before its
  outcomes are stored (durability: SQLite WAL synchronous=FULL, PostgreSQL
  default synchronous_commit; the pool and rg | sed write without fsync).
- ours, `orchestrator run` cold: what a user sees. `orchestrator run SPEC
  --json` as a subprocess on a fresh embedded state folder (no worker
  running): CLI start-up, submission, the worker `run` starts itself, the
  job, the summary. Timed from spawn to exit. Reported beside the target,
  which is about the warm worker.
- process pool: `concurrent.futures.ProcessPoolExecutor(2)` over the same
  files (listing included): read, skip binary / non-UTF-8 as ours does,
  `re.subn`, write back if changed (plain write, no fsync). The target is
  against this one, the script a user would write.
- process pool, durable writes: the same, each changed file written as ours
  writes it (temp file, fsync, rename, fsync of its folder), so the cost of
  durability shows beside the target; ours pays it too, by one sync of the
  file system per phase instead (`orchestrator.tools.durable`). Reported,
  not a target.
- rg | sed: `rg -l0 --hidden --no-ignore -g '*.py' PATTERN DIR | xargs -0 -r
  sed -i -E 's/\\bgetattr\\(/safe_getattr(/g'`. Dialects: `\\b` is a word
  boundary in Python `re`, Rust regex (rg) and GNU sed alike, `\\(` a literal
  parenthesis in all three (ERE with -E); the tree digests confirm it.

Contenders run interleaved, round by round (the order reversed every other
round). The verdict is the median over the rounds of each round's ratio to
the pool's time in that same round (paired: a round slowed by other work on
the machine slows both), with the rounds' min-max beside it. 7 rounds (the
cold run, the slowest contender and no target, in the first 3 only): with 3
the rounds spread 1.03x-1.71x on the idle machine and one round decided.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sysconfig
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    CACHE,
    REDIS_BACKEND,
    REDIS_BROKER,
    Options,
    Result,
    median,
    now,
    pg_available,
    pg_drop,
    pg_recreate,
    redis_available,
    show,
    x,
)
from bench.dispatch import celery_worker, clean_env, flush_redis

PATTERN = r"\bgetattr\("
REPLACEMENT = "safe_getattr("
SED_SCRIPT = r"s/\bgetattr\(/safe_getattr(/g"
FILES_PER_REPO = 23
TARGET_RATIO = 1.3
ROUNDS, QUICK_ROUNDS = 7, 2
COLD_ROUNDS = 3  # the cold run only in the first rounds: 15-30 s each, no target
WORKER_PROCS = 2
SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}

BATCH = CACHE / "batch"


# -- the corpus ---------------------------------------------------------------------


def _stdlib_files() -> list[tuple[str, bytes]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            data = path.read_bytes()
            if b"\0" in data:
                continue
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            out.append((path.relative_to(root).as_posix(), data))
    return out


def corpus(copies: int) -> Path:
    """bench/.cache/batch/pristine-N: `copies` copies of the stdlib cut into repos."""
    pristine = BATCH / f"pristine-{copies}"
    done = pristine / ".complete"
    if done.exists():
        return pristine
    shutil.rmtree(pristine, ignore_errors=True)
    files = _stdlib_files()
    for c in range(copies):
        for k in range(0, len(files), FILES_PER_REPO):
            repo = pristine / f"repo-{c:02d}-{k // FILES_PER_REPO:03d}"
            for rel, data in files[k : k + FILES_PER_REPO]:
                dest = repo / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
    done.write_text(f"{copies * len(files)} files\n")
    return pristine


def fresh_copy(pristine: Path) -> Path:
    """A copy of the corpus to rewrite, already on disk when the timer starts.

    `cp -r` leaves about 145 MB dirty in the page cache (the copy, and the
    previous copy's removal). Unsynced, it skews the contenders both ways:
    - it is written back inside whichever contender syncs the file system
      first (ours: its first syncfs took 0.45-0.5 s of a 3.5 s run on the
      bench machine) or whenever the kernel's writeback runs;
    - rewriting a file whose blocks were never allocated (ext4's delayed
      allocation) skips freeing and allocating them: the plain pool took
      2.66-2.70 s on an unsynced copy, 3.14-3.43 s on a synced one (read
      through or not; three rounds each).
    A user's repositories are on disk before the job, so every contender
    starts from a synced copy."""
    work = BATCH / "work"
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["cp", "-r", str(pristine), str(work)], check=True)
    (work / ".complete").unlink()
    os.sync()
    return work


def tree_digest(root: Path) -> tuple[str, int]:
    """(sha256 over every file's path and content, number of files)."""
    h = hashlib.sha256()
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
            n += 1
    return h.hexdigest(), n


# -- contender: a process pool ------------------------------------------------------

_RX = re.compile(PATTERN, re.MULTILINE)


def _rewritten(path: str) -> tuple[str | None, int]:
    """The file's new text (None: binary, not UTF-8, or unchanged) and the count."""
    with open(path, "rb") as fh:
        data = fh.read()
    if b"\0" in data:
        return None, 0
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, 0
    new, n = _RX.subn(REPLACEMENT, text)
    return (new if n and new != text else None), n


def _replace_file(path: str) -> int:
    new, n = _rewritten(path)
    if new is not None:
        with open(path, "wb") as fh:
            fh.write(new.encode("utf-8"))
    return n


def _replace_file_durable(path: str) -> int:
    """`_replace_file`, written as ours writes: a temp file beside it, fsynced,
    renamed over it, the folder fsynced (durable and never half written)."""
    new, n = _rewritten(path)
    if new is not None:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(new.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
        fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return n


def run_pool(work: Path, durable: bool = False) -> tuple[float, int]:
    t = now()
    paths = [os.path.join(d, f) for d, _, fs in os.walk(work) for f in fs if f.endswith(".py")]
    fn = _replace_file_durable if durable else _replace_file
    with ProcessPoolExecutor(WORKER_PROCS) as pool:
        count = sum(pool.map(fn, paths, chunksize=64))
    return now() - t, count


# -- contender: rg | xargs sed --------------------------------------------------------


def run_rg_sed(work: Path) -> tuple[float, int]:
    t = now()
    cmd = (
        f"rg -l0 --hidden --no-ignore -g '*.py' -e '{PATTERN}' '{work}' "
        f"| LC_ALL=C.UTF-8 xargs -0 -r sed -i -E '{SED_SCRIPT}'"
    )
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    return now() - t, -1


# -- contender: ours ------------------------------------------------------------------


class Ours:
    """One deployment shape: its store and a Celery app to submit with."""

    def __init__(
        self, name: str, state: Path, store_url: str, broker: str | None, backend: str | None
    ) -> None:
        from events.store import open_store
        from orchestrator.config.settings import Settings
        from tasks.app import make_app

        self.name, self.state = name, state
        state.mkdir(parents=True, exist_ok=True)
        self.settings = Settings(
            state_dir=state, store_url=store_url, broker_url=broker, result_backend=backend
        )
        self.store = open_store(self.settings.effective_store_url, upgrade=True)
        self.app = make_app(self.settings)
        env = {
            "ORCH_STATE_DIR": str(state),
            "ORCH_LOG_LEVEL": "WARNING",
            "ORCH_WORKER_CONCURRENCY": str(WORKER_PROCS),
        }
        if store_url:
            env["ORCH_STORE_URL"] = store_url
        if broker:
            env["ORCH_BROKER_URL"] = broker
        if backend:
            env["ORCH_RESULT_BACKEND"] = backend
        self.env = clean_env(**env)
        self.redis = broker is not None and broker.startswith("redis")

    def submit_and_wait(self, repos: Path, timeout: float = 600.0) -> tuple[float, str, Any]:
        from orchestrator.run import jobs
        from orchestrator.run.jobspec import JobSpec
        from tasks.dispatch import enqueue

        spec = JobSpec.model_validate(
            {
                "name": "bench-rename-getattr",
                "targets": [f"{repos}/*"],
                "steps": [
                    {
                        "kind": "replace",
                        "name": "rename",
                        "pattern": PATTERN,
                        "replacement": REPLACEMENT,
                        "glob": ["**/*.py"],
                    }
                ],
            }
        )
        t = now()
        job_id, tickets = jobs.prepare(spec, repos)
        jobs.record(self.store, spec, job_id, tickets, "user:bench")
        enqueue(tickets, spec.steps, app=self.app, sign=self.settings.audit_key_file is not None)
        after, status = 0, None
        deadline = time.monotonic() + timeout
        while status is None:
            for e in self.store.read_stream(job_id, after):
                after = e.seq
                if e.type == "JobCompleted":
                    status = e.payload.status
            if status is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"job {job_id} did not complete in {timeout:.0f} s; "
                        f"see {self.state / 'worker.log'}"
                    )
                time.sleep(0.005)
        return now() - t, status, tickets

    def worker(self) -> Any:
        return celery_worker(
            "tasks.app",
            "orchestrator",
            self.env,
            self.state / "worker.log",
            concurrency=WORKER_PROCS,
        )

    def replacements(self, tickets: Any) -> int:
        from events.history import history

        total = 0
        for t in tickets:
            s = history(self.store, t.session_id).session
            if s.status != "completed":
                raise RuntimeError(f"session {t.target} ended {s.status}: {s.error}")
            total += sum(c.planned_count for c in s.calls)
        return total


def run_ours(shape: Ours, pristine: Path) -> tuple[float, int]:
    warm = BATCH / "warm"
    shutil.rmtree(warm, ignore_errors=True)
    (warm / "r").mkdir(parents=True)
    (warm / "r" / "m.py").write_text("getattr(x, 'y')\n")
    if shape.redis:
        flush_redis(REDIS_BROKER, REDIS_BACKEND)
    with shape.worker():
        shape.submit_and_wait(warm, timeout=120)  # started and warm
        work = fresh_copy(pristine)
        dt, status, tickets = shape.submit_and_wait(work)
    if status != "completed":
        shape.replacements(tickets)  # raises with the first failed session's error
        raise RuntimeError(f"our job ended {status}; see {shape.state / 'worker.log'}")
    return dt, shape.replacements(tickets)


COLD = "ours, `orchestrator run` cold (embedded, starts its own worker)"
POOL_DURABLE = "process pool (2), durable writes"


def run_cli_cold(pristine: Path) -> tuple[float, int]:
    """`orchestrator run` as a user types it, on a fresh embedded state folder."""
    import sys

    state = BATCH / "state-cold"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    work = fresh_copy(pristine)
    spec = state / "job.yaml"
    spec.write_text(
        "name: bench-rename-getattr\n"
        f"targets: ['{work}/*']\n"
        "steps:\n"
        "  - kind: replace\n"
        "    name: rename\n"
        f"    pattern: '{PATTERN}'\n"
        f"    replacement: '{REPLACEMENT}'\n"
        "    glob: ['**/*.py']\n"
    )
    exe = Path(sys.executable).with_name("orchestrator")
    env = clean_env(ORCH_STATE_DIR=str(state), ORCH_WORKER_CONCURRENCY=str(WORKER_PROCS))
    t = now()
    done = subprocess.run(
        [str(exe), "run", str(spec), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    dt = now() - t
    if done.returncode != 0:
        raise RuntimeError(f"orchestrator run exited {done.returncode}: {done.stderr[-300:]}")
    return dt, -1


# -- the bench ------------------------------------------------------------------------


def run(opts: Options) -> Result:
    res = Result("batch")
    copies, n_rounds = (3, QUICK_ROUNDS) if opts.quick else (10, ROUNDS)
    t = now()
    pristine = corpus(copies)
    n_files = int((pristine / ".complete").read_text().split()[0])
    n_repos = sum(1 for p in pristine.iterdir() if p.is_dir())
    print(f"corpus: {n_files:,} files in {n_repos} repositories ({now() - t:.1f} s to ready)")
    print(
        "durability: ours SQLite WAL synchronous=FULL / PostgreSQL default "
        "synchronous_commit, changed files durable before their outcome is stored; "
        "pool and rg | sed: plain writes, no fsync; the durable pool: temp file, fsync, "
        "rename, folder fsync per changed file. Every contender's copy of the corpus is "
        f"synced to disk before its timer starts. Rounds: {n_rounds}, interleaved"
    )

    shapes: list[Ours] = [
        Ours("ours, embedded (sqlite store + broker)", BATCH / "state-embedded", None, None, None)
    ]  # type: ignore[arg-type]
    pg_db = "orch_bench_batch"
    if redis_available() and pg_available():
        shapes.append(
            Ours(
                "ours, redis broker + postgresql store",
                BATCH / "state-pg",
                pg_recreate(pg_db),
                REDIS_BROKER,
                REDIS_BACKEND,
            )
        )
    else:
        res.notes.append("Redis or PostgreSQL unreachable: the production shape is missing")
    contenders: dict[str, Any] = {s.name: (lambda s=s: run_ours(s, pristine)) for s in shapes}
    contenders[COLD] = lambda: run_cli_cold(pristine)
    contenders["process pool (2)"] = lambda: run_pool(fresh_copy(pristine))
    contenders[POOL_DURABLE] = lambda: run_pool(fresh_copy(pristine), durable=True)
    contenders["rg | xargs sed"] = lambda: run_rg_sed(fresh_copy(pristine))

    times: dict[str, list[float]] = {k: [] for k in contenders}
    counts: dict[str, int] = {}
    digests: dict[str, set[str]] = {k: set() for k in contenders}
    failed: dict[str, str] = {}
    skipped: dict[str, set[int]] = {k: set() for k in contenders}  # rounds without a time
    try:
        for r in range(n_rounds):
            order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for name in order:
                if name in failed or (name == COLD and r >= COLD_ROUNDS):
                    skipped[name].add(r)
                    continue
                try:
                    dt, count = contenders[name]()
                except Exception as exc:  # report it, let the others run
                    failed[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                    skipped[name].add(r)
                    print(f"  round {r + 1}: {name} FAILED: {failed[name]}", flush=True)
                    continue
                times[name].append(dt)
                if count >= 0:
                    counts[name] = count
                digest, n = tree_digest(BATCH / "work")
                digests[name].add(digest)
                if opts.verbose:
                    print(f"  round {r + 1}: {name}: {dt:.2f} s, {n} files, {digest[:12]}")
    finally:
        for s in shapes:
            s.store.close()
        pg_drop(pg_db)
    for name, why in failed.items():
        res.notes.append(f"{name} failed: {why}")
    all_digests = set().union(*digests.values())
    identical = len(all_digests) == 1
    ran = {k: [r for r in range(n_rounds) if r not in skipped[k]] for k in times}

    def ratios(k: str) -> list[float]:
        """Each round's time over the pool's in the same round (interleaved)."""
        pools = dict(zip(ran["process pool (2)"], times["process pool (2)"]))
        return [t / pools[r] for r, t in zip(ran[k], times[k]) if r in pools]

    def spread(k: str) -> str:
        """min-max of the per-round ratios to the pool."""
        rs = ratios(k)
        return f"{x(min(rs))}-{x(max(rs))}" if rs else "-"

    rows = [
        (
            k,
            median(v),
            min(v),
            max(v),
            x(median(ratios(k))) if ratios(k) else "-",
            spread(k),
            counts.get(k, "-"),
            next(iter(digests[k]))[:12] if len(digests[k]) == 1 else "DIFFERS",
        )
        for k, v in times.items()
        if v
    ]
    show(
        f"[batch] {n_files:,} files in {n_repos} repos, {PATTERN} -> {REPLACEMENT} "
        f"(median of {n_rounds} rounds, wall s; / pool: median of the rounds' ratios)",
        ("contender", "wall s", "min", "max", "/ pool", "range", "replacements", "tree digest"),
        rows,
    )
    res.figures = {
        "files": n_files,
        "repos": n_repos,
        "rounds": n_rounds,
        "wall_s": times,
        "replacements": counts,
        "identical": identical,
    }
    if not identical:
        res.notes.append("the contenders left DIFFERENT trees: the figures do not compare")
    for s in shapes:
        if not times[s.name]:
            res.target(f"{s.name} vs process pool", f"<= {TARGET_RATIO:.2f}x", "failed", None)
            continue
        r = median(ratios(s.name))
        res.target(
            f"{s.name} vs process pool",
            f"<= {TARGET_RATIO:.2f}x",
            f"{x(r)} ({spread(s.name)})",
            (r <= TARGET_RATIO) and identical,
        )
    if times[POOL_DURABLE]:
        r = median(ratios(POOL_DURABLE))
        res.notes.append(
            f"{POOL_DURABLE}: {x(r)} ({spread(POOL_DURABLE)}) the plain pool: "
            "what durability costs a script that writes file by file"
        )
    if times[COLD]:
        r = median(ratios(COLD))
        res.notes.append(
            f"{COLD}: {x(r)} ({spread(COLD)}) the process pool (the target is the warm worker's)"
        )
    res.print_targets()
    return res

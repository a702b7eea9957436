"""Shared pieces of the benchmarks: options, timing, tables, realistic events,
and throwaway databases.

Benchmarks are not tests: nothing here asserts. Each bench prints aligned
tables with ratios (ours / peer) and the targets it was given, met or missed,
and returns a dict of its figures for `--json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
CACHE = BENCH_DIR / ".cache"  # gitignored: generated logs, corpora, scratch dbs

PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_BROKER = os.environ.get("BENCH_REDIS_BROKER", "redis://127.0.0.1:6379/13")
REDIS_BACKEND = os.environ.get("BENCH_REDIS_BACKEND", "redis://127.0.0.1:6379/14")

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Options:
    quick: bool = False
    verbose: bool = False


# -- timing ---------------------------------------------------------------------


def now() -> float:
    return time.perf_counter()


def idle_setup() -> dict[str, str]:
    """How this machine's idle vCPUs wait, which moves every latency here:
    code that runs right after a process waited runs slower, and more so the
    longer the wait, when an idle vCPU halts at once (docs/performance.md,
    "Virtual machines"). Read from sysfs; empty where it says nothing."""
    found = {}
    for name, path in (
        ("cpuidle driver", "/sys/devices/system/cpu/cpuidle/current_driver"),
        ("guest_halt_poll_ns", "/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
    ):
        with contextlib.suppress(OSError):
            found[name] = Path(path).read_text().strip()
    return found


def pct(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank on sorted samples."""
    s = sorted(samples)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# -- tables ---------------------------------------------------------------------


def fmt(x: Any, digits: int = 0) -> str:
    if isinstance(x, str):
        return x
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "n/a"
        if digits:
            return f"{x:,.{digits}f}"
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table: first column left, the rest right-aligned."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        )

    out = [title, line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def show(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print()
    print(table(title, headers, rows), flush=True)


def ratio(ours: float, peer: float) -> float:
    return ours / peer if peer else float("nan")


def x(r: float) -> str:
    return "n/a" if r != r else f"{r:.2f}x"


@dataclass
class Target:
    name: str
    wanted: str
    measured: str
    met: bool | None  # None: could not be measured

    @property
    def verdict(self) -> str:
        return {True: "MET", False: "MISSED", None: "NOT MEASURED"}[self.met]


@dataclass
class Result:
    """What one bench reports: its tables (as data) and its targets."""

    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def target(self, name: str, wanted: str, measured: str, met: bool | None) -> None:
        self.targets.append(Target(name, wanted, measured, met))

    def print_targets(self) -> None:
        if self.targets:
            show(
                f"[{self.name}] targets",
                ("target", "wanted", "measured", "verdict"),
                [(t.name, t.wanted, t.measured, t.verdict) for t in self.targets],
            )
        for n in self.notes:
            print(f"  note: {n}")

    def to_json(self) -> dict[str, Any]:
        return {
            "figures": self.figures,
            "targets": [t.__dict__ | {"verdict": t.verdict} for t in self.targets],
            "notes": self.notes,
        }


def banner(text: str) -> None:
    print()
    print("=" * len(text))
    print(text)
    print("=" * len(text), flush=True)


# -- realistic session events ---------------------------------------------------

_WORDS = (
    "import",
    "def",
    "return",
    "self",
    "value",
    "config",
    "path",
    "error",
    "items",
    "result",
    "test",
    "passed",
    "failed",
    "warning",
    "module",
    "fetch_user",
    "load_user",
    "request",
    "response",
    "None",
    "True",
    "assert",
    "data",
)


def text_blob(rng: random.Random, nbytes: int) -> str:
    """Plausible tool output (lines of words), about `nbytes` long."""
    lines, size = [], 0
    while size < nbytes:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12)))
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)[:nbytes]


def diff_blob(rng: random.Random, path: str, hunks: int = 2) -> str:
    out = [f"--- a/{path}", f"+++ b/{path}"]
    for _ in range(hunks):
        start = rng.randint(1, 400)
        out.append(f"@@ -{start},7 +{start},7 @@")
        for _ in range(3):
            out.append(" " + text_blob(rng, 50))
        out.append("-    user = fetch_user(request.user_id)")
        out.append("+    user = load_user(request.user_id)")
        for _ in range(3):
            out.append(" " + text_blob(rng, 50))
    return "\n".join(out) + "\n"


def step_payloads(rng: random.Random, session: str, turn: int) -> list[Any]:
    """The events of one realistic step: 5 to 9 events, like orchestrator.run.runner
    appends them (request, decision, start, planned file changes, completion)."""
    from events import payloads as p

    tool = ("replace", "search", "shell")[turn % 3]
    call = f"{session}/{turn}"
    files = (
        [f"src/pkg/module_{turn}_{i}.py" for i in range(rng.randint(0, 2))]
        if tool == "replace"
        else []
    )
    if tool == "shell":
        args: dict[str, Any] = {
            "kind": "shell",
            "command": ["pytest", "-q", "tests/"],
            "cwd": ".",
            "timeout_s": 300.0,
        }
    else:
        args = {
            "kind": tool,
            "pattern": r"\bfetch_user\b",
            "replacement": "load_user",
            "glob": ["**/*.py"],
            "timeout_s": 300.0,
        }
    out: list[Any] = [
        p.TurnStarted(turn=turn, name=f"step-{turn}", kind=tool),
        p.ToolCallRequested(call_id=call, turn=turn, tool=tool, args=args),
        p.PermissionDecided(
            call_id=call,
            decision="allow",
            rule_id="default-allow",
            policy_hash=hashlib.sha256(b"policy").hexdigest(),
            reason="tier exec allows " + tool,
        ),
        p.ToolCallStarted(call_id=call, planned_count=len(files)),
    ]
    out += [
        p.FileChanged(
            call_id=call,
            path=f,
            before_hash=hashlib.sha256(f.encode()).hexdigest(),
            after_hash=hashlib.sha256(f.encode() + b"!").hexdigest(),
            diff=diff_blob(rng, f),
        )
        for f in files
    ]
    output = text_blob(rng, rng.randint(200, 2000))
    out.append(
        p.ToolCallCompleted(
            call_id=call,
            tool=tool,
            exit_code=0,
            duration_s=round(rng.uniform(0.01, 3), 6),
            cpu_s=round(rng.uniform(0.0, 2), 6),
            output=output,
            output_bytes=len(output) * 3,
            output_digest=hashlib.sha256(output.encode()).hexdigest(),
            bytes_written=sum(len(f) for f in files) * 40,
            count=len(files),
        )
    )
    out.append(p.TurnCompleted(turn=turn, status="ok"))
    return out


def session_payloads(
    rng: random.Random, session: str, n_events: int, job_id: str = "job-bench"
) -> list[Any]:
    """Exactly `n_events` payloads of one realistic session: SessionStarted, steps,
    SessionCompleted (the last step is cut to fit)."""
    from events import payloads as p

    body: list[Any] = []
    turn = 0
    while len(body) < n_events - 2:
        turn += 1
        body += step_payloads(rng, session, turn)
    body = body[: max(0, n_events - 2)]
    return (
        [
            p.SessionStarted(
                job_id=job_id,
                target=f"/work/repos/{session}",
                steps=tuple(f"step-{i}" for i in range(1, turn + 1)),
            )
        ]
        + body
        + [p.SessionCompleted(files_changed=turn)]
    )[:n_events]


def new_events(
    payloads: Sequence[Any],
    *,
    correlation_id: str = "job-bench",
    key: str | None = None,
    start: int = 0,
) -> list[Any]:
    """NewEvents with deterministic timestamps (one ms apart) and fresh UUIDv7 ids."""
    from events.envelope import NewEvent

    return [
        NewEvent.create(
            pl,
            actor="worker:bench:1",
            correlation_id=correlation_id,
            idempotency_key=key,
            occurred_at=T0 + timedelta(milliseconds=start + i),
        )
        for i, pl in enumerate(payloads)
    ]


# -- databases --------------------------------------------------------------------


# Appended to every scratch database's name, so two bench runs at once (say,
# two checkouts on one machine) do not drop each other's databases.
PG_SUFFIX = os.environ.get("BENCH_PG_SUFFIX", "")


def pg_url(db: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}{PG_SUFFIX}"


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def pg_recreate(db: str) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}{PG_SUFFIX}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}{PG_SUFFIX}"')
    return pg_url(db)


def pg_drop(db: str) -> None:
    import psycopg

    with contextlib.suppress(Exception), psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}{PG_SUFFIX}" WITH (FORCE)')


def sqlite_files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def rm_sqlite(path: Path) -> None:
    for f in sqlite_files(path):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


def redis_available(url: str = REDIS_BROKER) -> bool:
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    """A fresh folder under bench/.cache (on disk, not tmpfs: fsync must cost)."""
    import shutil

    d = CACHE / "scratch" / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def rounds(fns: dict[str, Callable[[int], float]], n_rounds: int) -> dict[str, list[float]]:
    """Run each contender once per round, interleaved (a slow phase of the
    machine then hurts all sides alike); returns per-contender samples."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(n_rounds):
        for k, fn in fns.items():
            out[k].append(fn(r))
    return out

"""CLI start-up: `orchestrator --help` and `orchestrator status JOB` against
`celery --help`, the peer a user of this tool already waits for.

Each contender is a fresh process (the console scripts of this environment),
run once per round, interleaved, so a slow phase of the machine hurts all
alike. The target is on wall time; the CPU time each process used is shown
beside it, as a reading a loaded machine disturbs less. `status` reads a
job that ran, in an embedded state folder made here and, when PostgreSQL is
reachable, in a database made there: its steps run in this process through
the runner, with the event filters every writer uses (masked, forgettable
fields sealed), so `status` reads what it reads after a real run (no broker,
no worker). Target: each of ours at most 1.0x celery's median.

`python -m bench --only cli_startup`, or `python -m bench.cli_startup
[--quick] [--json]` on its own.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson

from bench.common import (
    Options,
    Result,
    now,
    pct,
    pg_available,
    pg_drop,
    pg_recreate,
    rounds,
    scratch_dir,
    show,
    x,
)
from events.store import open_store
from orchestrator.audit import kek
from orchestrator.audit.protect import event_filters
from orchestrator.config.settings import get_settings
from orchestrator.run import jobs
from orchestrator.run.jobspec import load_spec
from orchestrator.run.runner import Runner
from orchestrator.run.sample_repos import create_sample_repos

TARGET = 1.0
PG_DB = "orch_bench_cli_startup"
STORES = (
    "stores read: embedded SQLite (WAL, synchronous=FULL) and PostgreSQL on "
    "127.0.0.1 (server defaults), each holding one job of 3 targets x 3 steps "
    "that ran, payloads sealed; `status` only reads"
)
EXAMPLES = Path(__file__).resolve().parents[1] / "orchestrator" / "examples"


def _script(name: str) -> str:
    """A console script of this environment (next to the interpreter)."""
    return str(Path(sys.executable).with_name(name))


def _finished_job(state: Path, server: dict[str, str] | None = None) -> str:
    """A job run to its end in a store under `state` (embedded), or in the
    server store `server` names (ORCH_STORE_URL, ORCH_DATA_KEK_FILE); its id.
    Its steps run here, one session after another, as a worker runs them."""
    extra = {"ORCH_STATE_DIR": str(state), **(server or {})}
    os.environ.update(extra)
    get_settings.cache_clear()  # read again, with this state folder
    try:
        s = get_settings()
        if s.data_kek_file is not None and not s.data_kek_file.exists():
            kek.generate(s.data_kek_file)
        create_sample_repos(state / "sample-repos")
        spec = load_spec(EXAMPLES / "rename-function.yaml")
        job_id, tickets = jobs.prepare(spec, state)
        st = open_store(s.effective_store_url, upgrade=True, filters=event_filters(s))
        jobs.record(st, spec, job_id, tickets, "bench")
        runner = Runner(st, "worker:bench", settings=s)
        last = len(spec.steps) - 1
        for t in tickets:
            for i, step in enumerate(spec.steps):
                runner.run_step(t, i, step, last=i == last)
        st.close()
    finally:
        for k in extra:
            os.environ.pop(k, None)
        get_settings.cache_clear()
    return job_id


def _cpu_s() -> float:
    """CPU seconds (user + system) of the children this process has waited for."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _timed(argv: list[str], env: dict[str, str], cpu: list[float]) -> Callable[[int], float]:
    """One fresh run's wall time (ms); its CPU time (ms) goes to `cpu`, which
    a loaded machine stretches far less than wall time (a second reading)."""

    def once(_round: int) -> float:
        c, t = _cpu_s(), now()
        done = subprocess.run(argv, env=env, capture_output=True, check=False)
        took = now() - t
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-500:]!r}")
        if _round >= 0:
            cpu.append((_cpu_s() - c) * 1000)
        return took * 1000

    return once


def run(opts: Options) -> Result:
    res = Result("cli_startup")
    res.notes.append(STORES)
    n = 5 if opts.quick else 15
    server = pg_available()
    if not server:
        res.notes.append("PostgreSQL unreachable: `status` against it is not measured")
    with scratch_dir("cli_startup") as d:
        # Like for like: celery's modules were compiled when pip installed it; an
        # editable checkout gets its .pyc files from the warm-up below, unless
        # the caller's environment forbids writing them (each run would then
        # compile every module of ours from source, ~100 ms).
        base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env = {**base, "ORCH_STATE_DIR": str(d / "state"), "NO_COLOR": "1"}
        argvs = {
            "orchestrator --help": ([_script("orchestrator"), "--help"], env),
            "orchestrator status": (
                [_script("orchestrator"), "status", _finished_job(d / "state")],
                env,
            ),
            "celery --help": ([_script("celery"), "--help"], env),
        }
        if server:
            pg = {"ORCH_STORE_URL": pg_recreate(PG_DB), "ORCH_DATA_KEK_FILE": str(d / "kek.key")}
            job = _finished_job(d / "pg-state", pg)
            argvs["orchestrator status (PostgreSQL)"] = (
                [_script("orchestrator"), "status", job],
                {**env, **pg, "ORCH_STATE_DIR": str(d / "pg-state")},
            )
        try:
            cpu: dict[str, list[float]] = {k: [] for k in argvs}
            contenders = {k: _timed(a, e, cpu[k]) for k, (a, e) in argvs.items()}
            for fn in contenders.values():  # warm-up: the page cache, .pyc files
                fn(-1)
            samples = rounds(contenders, n)
        finally:
            if server:
                pg_drop(PG_DB)
    peer = samples["celery --help"]
    rows = []
    for name, ms in samples.items():
        ratios = [a / b for a, b in zip(ms, peer, strict=True)]
        cpu_ratio = pct(cpu[name], 50) / pct(cpu["celery --help"], 50)
        rows.append((name, pct(ms, 50), min(ms), max(ms), x(pct(ratios, 50)), x(cpu_ratio), ratios))
        res.figures[name] = {
            "median_ms": pct(ms, 50),
            "samples_ms": ms,
            "cpu_median_ms": pct(cpu[name], 50),
            "cpu_samples_ms": cpu[name],
        }
    show(
        f"[cli_startup] wall time of a fresh process, {n} interleaved rounds (ms)",
        ("contender", "median", "min", "max", "ratio to celery (median)", "CPU-time ratio"),
        [r[:6] for r in rows],
    )
    for name, *_rest, ratios in rows:
        if name == "celery --help":
            continue
        med = pct(ratios, 50)
        res.target(
            f"{name} vs celery --help",
            f"<= {TARGET:.1f}x",
            f"{x(med)} (spread {x(min(ratios))}-{x(max(ratios))})",
            med <= TARGET,
        )
    res.print_targets()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cli_startup", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="5 rounds instead of 15")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    res = run(Options(quick=args.quick))
    if args.json:
        sys.stdout.write(orjson.dumps(res.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if all(t.met for t in res.targets) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Sandbox spawn overhead: one shell call through `run_shell` (plan, workspace
ownership, cgroups, bubblewrap or the fallback, supervision, sweep, restore)
vs a bare `subprocess.run` of the same command.

Commands: `true` (pure spawn cost) and `python3 -c pass` (a real program
starting: dynamic loading, reading its stdlib). Both use the python3 the
sandbox can reach on its PATH. The workspace is a small repository-like
folder (50 files in 5 folders): the sandbox hands it to its uid and back on
every call, which costs per file.

Contenders, interleaved call by call (the order rotates each call, so a slow
phase of the machine hurts all alike): the bare call; `run_shell` as
configured here; `run_shell` without a cgroup (rlimits only: what a v1 cgroup
migration costs); `run_shell` forced to the fallback; and the planned
bwrap+setpriv argv run alone by `subprocess.run` (the namespaces' floor). The
figures are p50 and p99 over the calls. Target (from the issue): the sandbox
under 1.5x the bare call, or under 15 ms extra, whichever is larger.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Options, Result, pct, scratch_dir, show, x


def _workspace(root: Path) -> Path:
    ws = root / "ws"
    for d in range(5):
        (ws / f"pkg{d}").mkdir(parents=True)
        for f in range(10):
            (ws / f"pkg{d}" / f"mod{f}.py").write_text(f"def f{f}():\n    return {f}\n")
    return ws


def run(opts: Options) -> Result:
    from orchestrator import sandbox
    from orchestrator.steps import ShellStep
    from orchestrator.tools.shell import run_shell

    res = Result("sandbox")
    host = sandbox.probe()
    no_cgroup = dataclasses.replace(host, cgroups=sandbox.Cgroups(why="off for the bench"))
    n = 30 if opts.quick else 150
    python3 = shutil.which("python3", path=host.path) or "python3"
    commands = {"true": ["true"], "python3 -c pass": [python3, "-c", "pass"]}
    active = host.mode("auto")
    if active == "fallback":
        res.notes.append("bubblewrap is not installed: 'sandbox' is the fallback mode")
    rows = []
    with scratch_dir("sandbox") as d:
        ws = _workspace(d)
        for label, argv in commands.items():
            step = ShellStep(command=argv, timeout_s=30)

            def bare(argv: list[str] = argv) -> None:
                subprocess.run(argv, cwd=ws, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, check=True)

            def boxed(mode: sandbox.Mode, h: sandbox.Host = host,
                      step: ShellStep = step) -> Callable[[], None]:
                return lambda: (run_shell(ws, step, mode=mode, host=h), None)[1]

            def floor(argv: list[str] = argv) -> Callable[[], None]:
                # The planned bwrap+setpriv argv alone: no cgroup, no ownership
                # hand-over, no supervision. What the namespaces cost by themselves.
                req = sandbox.Request(argv=tuple(argv), workspace=str(ws), cwd=str(ws),
                                      ancestors=sandbox.ancestors_of(ws))
                planned = sandbox.plan(req, no_cgroup)
                return lambda: (subprocess.run(planned.argv, env=planned.env, cwd=ws,
                                               stdin=subprocess.DEVNULL,
                                               stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT), None)[1]

            contenders: dict[str, Callable[[], None]] = {
                "bare subprocess.run": bare, f"sandbox ({active})": boxed("auto")}
            if host.cgroups.version:
                contenders[f"sandbox ({active}), no cgroup"] = boxed("auto", no_cgroup)
            if active == "bwrap":
                contenders["sandbox (fallback)"] = boxed("fallback")
                contenders["bwrap argv alone"] = floor()
            samples: dict[str, list[float]] = {k: [] for k in contenders}
            for fn in contenders.values():           # warm caches, probe, imports
                fn()
            names = list(contenders)
            for i in range(n):
                for k in names[i % len(names):] + names[:i % len(names)]:
                    t = time.perf_counter()
                    contenders[k]()
                    samples[k].append((time.perf_counter() - t) * 1000)
            base50, base99 = pct(samples[names[0]], 50), pct(samples[names[0]], 99)
            for k, v in samples.items():
                p50, p99 = pct(v, 50), pct(v, 99)
                rows.append((f"{label}: {k}", p50, p99, x(p50 / base50), p50 - base50,
                             x(p99 / base99)))
            p50 = pct(samples[names[1]], 50)
            allowed = max(1.5 * base50, base50 + 15.0)
            res.figures[label] = {"calls": n, "p50_ms": {k: pct(v, 50) for k, v in samples.items()},
                                  "p99_ms": {k: pct(v, 99) for k, v in samples.items()}}
            res.target(f"{label}: sandbox p50 vs bare",
                       f"<= max(1.5x, +15 ms) = {allowed:.1f} ms",
                       f"{p50:.1f} ms ({x(p50 / base50)}, +{p50 - base50:.1f} ms)",
                       p50 <= allowed)
    show(f"[sandbox] per shell call, {n} calls each, interleaved (ms)",
         ("command: contender", "p50 ms", "p99 ms", "p50 / bare", "p50 extra ms",
          "p99 / bare"),
         [(r[0], f"{r[1]:.2f}", f"{r[2]:.2f}", r[3], f"{r[4]:+.2f}", r[5]) for r in rows])
    res.print_targets()
    return res

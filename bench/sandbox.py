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

Migration: moving a sleeping process into a fresh per-call cgroup (each
hierarchy) after a 50 ms quiet spell, as between shell calls, alone: what the
kernel's RCU grace period costs, with the host setting `doctor` reports.

Masks: on a tree of 8,000 files cut from the installed Python's lib folder
(with `.env`, keys, `.ssh/` and `.git/config` planted), what finding the
policy's denied files costs: the first walk (cold: a new worker), a kept walk
of the unchanged tree, a kept walk after one folder changed; next to the
ownership hand-over every call already pays on that tree, and one `true`
call through `run_shell` there.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Options, Result, median, pct, scratch_dir, show, x

MASK_TREE_FILES = 8000


def _workspace(root: Path) -> Path:
    ws = root / "ws"
    for d in range(5):
        (ws / f"pkg{d}").mkdir(parents=True)
        for f in range(10):
            (ws / f"pkg{d}" / f"mod{f}.py").write_text(f"def f{f}():\n    return {f}\n")
    return ws


def run(opts: Options) -> Result:
    from orchestrator.run.steps import ShellStep
    from orchestrator.sandbox import runtime as sandbox
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
                subprocess.run(
                    argv,
                    cwd=ws,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    check=True,
                )

            def boxed(
                mode: sandbox.Mode, h: sandbox.Host = host, step: ShellStep = step
            ) -> Callable[[], None]:
                return lambda: (run_shell(ws, step, mode=mode, host=h), None)[1]

            def floor(argv: list[str] = argv) -> Callable[[], None]:
                # The planned bwrap+setpriv argv alone: no cgroup, no ownership
                # hand-over, no supervision. What the namespaces cost by themselves.
                req = sandbox.Request(
                    argv=tuple(argv),
                    workspace=str(ws),
                    cwd=str(ws),
                    ancestors=sandbox.ancestors_of(ws),
                )
                planned = sandbox.plan(req, no_cgroup)
                return lambda: (
                    subprocess.run(
                        planned.argv,
                        env=planned.env,
                        cwd=ws,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                    ),
                    None,
                )[1]

            contenders: dict[str, Callable[[], None]] = {
                "bare subprocess.run": bare,
                f"sandbox ({active})": boxed("auto"),
            }
            if host.cgroups.version:
                contenders[f"sandbox ({active}), no cgroup"] = boxed("auto", no_cgroup)
            if active == "bwrap":
                contenders["sandbox (fallback)"] = boxed("fallback")
                contenders["bwrap argv alone"] = floor()
            samples: dict[str, list[float]] = {k: [] for k in contenders}
            for fn in contenders.values():  # warm caches, probe, imports
                fn()
            names = list(contenders)
            for i in range(n):
                for k in names[i % len(names) :] + names[: i % len(names)]:
                    t = time.perf_counter()
                    contenders[k]()
                    samples[k].append((time.perf_counter() - t) * 1000)
            base50, base99 = pct(samples[names[0]], 50), pct(samples[names[0]], 99)
            for k, v in samples.items():
                p50, p99 = pct(v, 50), pct(v, 99)
                rows.append(
                    (f"{label}: {k}", p50, p99, x(p50 / base50), p50 - base50, x(p99 / base99))
                )
            p50 = pct(samples[names[1]], 50)
            allowed = max(1.5 * base50, base50 + 15.0)
            res.figures[label] = {
                "calls": n,
                "p50_ms": {k: pct(v, 50) for k, v in samples.items()},
                "p99_ms": {k: pct(v, 99) for k, v in samples.items()},
            }
            res.target(
                f"{label}: sandbox p50 vs bare",
                f"<= max(1.5x, +15 ms) = {allowed:.1f} ms",
                f"{p50:.1f} ms ({x(p50 / base50)}, +{p50 - base50:.1f} ms)",
                p50 <= allowed,
            )
    show(
        f"[sandbox] per shell call, {n} calls each, interleaved (ms)",
        ("command: contender", "p50 ms", "p99 ms", "p50 / bare", "p50 extra ms", "p99 / bare"),
        [(r[0], f"{r[1]:.2f}", f"{r[2]:.2f}", r[3], f"{r[4]:+.2f}", r[5]) for r in rows],
    )
    if host.cgroups.version:
        _migration(opts, res, host)
    if active == "bwrap":
        _masks(opts, res, host)
    res.print_targets()
    return res


def _migration(opts: Options, res: Result, host: object) -> None:
    from orchestrator.sandbox import runtime as sandbox

    assert isinstance(host, sandbox.Host)
    cg = host.cgroups
    parents = [p for p in dict.fromkeys((cg.pids, cg.memory)) if p]
    first: list[float] = []
    rest: list[float] = []
    for i in range(10 if opts.quick else 30):
        time.sleep(0.05)
        made = [Path(p, f"{os.getpid()}-bench-{i}") for p in parents]
        for d in made:
            d.mkdir()
        child = subprocess.Popen(["sleep", "10"])
        try:
            for j, d in enumerate(made):
                t = time.perf_counter()
                (d / "cgroup.procs").write_text(str(child.pid))
                (first if j == 0 else rest).append((time.perf_counter() - t) * 1000)
        finally:
            child.kill()
            child.wait()
            for d in made:
                sandbox._rmdir_cgroup(d)
    setting = host.fast_migration or "neither rcu_expedited=1 nor favordynmods"
    res.figures["migration"] = {
        "first_ms": median(first),
        "next_ms": median(rest) if rest else None,
        "host_setting": setting,
    }
    show(
        f"[sandbox] cgroup migration after 50 ms idle ({setting}), median (ms)",
        ("move", "ms"),
        [("first hierarchy", f"{median(first):.2f}")]
        + ([("second hierarchy, right after", f"{median(rest):.2f}")] if rest else []),
    )


def _mask_tree(root: Path, limit: int) -> tuple[Path, int, int]:
    """`limit` files of the installed Python's lib folder (no __pycache__),
    with secrets planted; (tree, files, folders)."""
    src = Path(sysconfig.get_paths()["stdlib"])
    ws = root / "tree"
    copied = 0
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if copied >= limit:
                break
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            (ws / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, ws / path.relative_to(src))
            copied += 1
        if copied >= limit:
            break
    for rel in (".env", "deploy/key.pem", ".ssh/id_rsa", ".git/config", "config/.env.prod"):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text("SECRET=x\n")
    old = time.time() - 3600  # folders old enough for the walk to keep them
    folders = 0
    for dirpath, _, _ in os.walk(ws):
        os.utime(dirpath, (old, old))
        folders += 1
    return ws, sum(len(f) for _, _, f in os.walk(ws)), folders


def _masks(opts: Options, res: Result, host: object) -> None:
    from orchestrator.run.steps import ShellStep
    from orchestrator.sandbox import runtime as sandbox
    from orchestrator.tools.shell import denied_reads, run_shell

    rules = denied_reads()
    reps = 5 if opts.quick else 15
    with scratch_dir("sandbox-masks") as d:
        ws, files, folders = _mask_tree(d, MASK_TREE_FILES)
        root = ws.resolve()

        def cold() -> float:
            sandbox._mask_cache.clear()
            sandbox.masker.cache_clear()
            t = time.perf_counter()
            sandbox.workspace_masks(root, rules)
            return (time.perf_counter() - t) * 1000

        def kept() -> float:
            t = time.perf_counter()
            sandbox.workspace_masks(root, rules)
            return (time.perf_counter() - t) * 1000

        def one_change(i: list[int] = [0]) -> float:
            i[0] += 1
            (ws / "json" / f"new{i[0]}.py").write_text("x = 1\n")  # one folder re-read
            return kept()

        def hand_over() -> float:
            t = time.perf_counter()
            with sandbox.prepare(root, sandbox.probe(), "bwrap", sandbox.SandboxLimits()):
                pass
            return (time.perf_counter() - t) * 1000

        def call() -> float:
            t = time.perf_counter()
            run_shell(ws, ShellStep(command=["true"], timeout_s=30))
            return (time.perf_counter() - t) * 1000

        (ws / "json").mkdir(exist_ok=True)
        figures = {}
        for name, fn in (
            ("first walk (cold)", cold),
            ("kept walk, tree unchanged", kept),
            ("kept walk, one folder changed", one_change),
            ("ownership hand-over (prepare + undo)", hand_over),
            ("run_shell `true` on the tree", call),
        ):
            fn()
            figures[name] = median([fn() for _ in range(reps)])
        masks = sandbox.workspace_masks(root, rules)
    res.figures["masks"] = {
        "files": files,
        "folders": folders,
        "masks": len(masks),
        "median_ms": figures,
    }
    show(
        f"[sandbox] masks on {files:,} files in {folders} folders ({len(masks)} masked), "
        f"median of {reps} (ms)",
        ("what", "ms"),
        [(k, f"{v:.1f}") for k, v in figures.items()],
    )

"""Sandbox per-call cost, by workspace size and against bare bubblewrap.

One `true` call through `run_shell` (plan, the copy-on-write view, cgroups,
bubblewrap, supervision, reading the changeset, sweep) on workspaces of
1,000, 10,000 and 100,000 files (100 files a folder), next to bare
bubblewrap running the same command on the 1k workspace with the same
mounts and namespaces as the call's (its argv from the sandbox's own
`bwrap_argv`: the system read-only, private /tmp, /run, /dev/shm, the
workspace bound read-write, pid, ipc and net namespaces, no capabilities),
the call without its cgroups (what the kernel's wait before the first cgroup
migration after a quiet spell costs) and a bare `subprocess.run` (for scale).

Calls are 50 ms apart (untimed), every contender alike, as an agent's shell
calls are (a model turn is far longer): the kernel's state between calls is
the one a real call meets (a cold cgroup migration, the standby made).

CPU ms: the CPU time of the bench process (every thread) and its reaped
children over a contender's calls, after-call work included (waited for
before the count is read), divided by the calls.

Rounds: each round runs every contender `CALLS` times, interleaved (the
order rotates each round, so a slow phase of the machine hurts all alike),
and keeps each contender's median; the ratios are taken per round, and the
table shows their median with the min-max spread over rounds.

Targets (issue 14): the 100k-file call within 1.2x of the 1k-file call (the
cost is flat in the workspace's size: no chown, the overlay is one mount,
the changeset is read from the upper directory alone), and within 1.2x of
bare bubblewrap.

A `python -c pass` row runs the bench's own interpreter through
`toolchains=` (its venv bound read-only, its bin/ first on PATH), so a venv
first on PATH no longer stops the bench.

Migration: moving a sleeping process into a fresh per-call cgroup (each
hierarchy) after a 50 ms quiet spell, as between shell calls, alone: what the
kernel's RCU grace period costs, with the host setting `doctor` reports.

Masks: on a tree of 8,000 files cut from the installed Python's lib folder
(with `.env`, keys, `.ssh/` and `.git/config` planted), what finding the
policy's denied files costs: the first walk (cold: a new worker), a kept walk
of the unchanged tree (inotify reported nothing: no folder is read), a kept
walk after one folder changed (that folder alone is read again), and one
`true` call through `run_shell` there.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Options, Result, median, scratch_dir, show, x

MASK_TREE_FILES = 8000
SIZES = (1_000, 10_000, 100_000)
PER_FOLDER = 100
LIMIT = 1.2
GAP_S = 0.05  # between calls, as between an agent's shell calls (a model turn is far longer)


def _workspace(root: Path, files: int) -> Path:
    ws = root / f"ws{files}"
    for i in range(files):
        d = ws / f"pkg{i // PER_FOLDER}"
        if i % PER_FOLDER == 0:
            d.mkdir(parents=True)
        (d / f"mod{i % PER_FOLDER}.py").write_text(f"X = {i}\n")
    old = time.time() - 3600  # folders old enough for the mask walk to keep them
    for dirpath, _, _ in os.walk(ws):
        os.utime(dirpath, (old, old))
    return ws


def _cpu_s() -> float:
    """CPU time of this process (all its threads) and its reaped children."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _settle() -> None:
    """Wait for the sandbox's after-call work (clean-up, the next standby,
    unmounting the view), so its CPU time is the calls' that caused it."""
    from orchestrator.sandbox import standby, view

    standby.settle()
    view.settle()


def _spread(rs: list[float]) -> str:
    return f"{x(median(rs))} ({x(min(rs))}-{x(max(rs))})"


def run(opts: Options) -> Result:
    from orchestrator.run.steps import ShellStep
    from orchestrator.sandbox import runtime as sandbox
    from orchestrator.sandbox.view import stable_mounts
    from orchestrator.tools.shell import run_shell

    res = Result("sandbox")
    host = sandbox.probe()
    n_rounds, calls = (5, 3) if opts.quick else (15, 5)
    mode, view = host.mode("auto"), host.view("auto")
    res.notes.append(f"sandbox mode {mode}, view {view}")
    with scratch_dir("sandbox") as d:
        wss = {n: _workspace(d, n) for n in SIZES}
        true = ShellStep(command=["true"], timeout_s=30)
        venv = sys.prefix
        py = ShellStep(command=[sys.executable, "-c", "pass"], timeout_s=30)

        def quiet(argv: list[str], ws: Path) -> Callable[[], object]:
            return lambda: subprocess.run(
                argv, cwd=ws, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=True
            )

        small = wss[SIZES[0]]
        contenders: dict[str, Callable[[], object]] = {
            f"run_shell true, {n:,} files": (lambda ws=ws: run_shell(ws, true, host=host))
            for n, ws in wss.items()
        }
        if host.bwrap:
            # The same mounts and namespaces as the call's bubblewrap (built by
            # the same function), on the workspace itself: what the call adds
            # is the view, the cgroups, the rlimits, supervision and the changeset.
            req = sandbox.Request(argv=("true",), workspace=str(small), cwd=str(small))
            bare = quiet(sandbox.bwrap_argv(host.bwrap, req, host.is_root) + ["true"], small)

            def bare_bwrap() -> object:
                with stable_mounts():  # run_shell's views are unmounted around it
                    return bare()

            contenders["bare bwrap true"] = bare_bwrap
        if host.cgroups.version:
            no_cg = dataclasses.replace(host, cgroups=sandbox.Cgroups(why="the bench's row"))
            contenders[f"run_shell true, {SIZES[0]:,} files, no cgroup"] = lambda: run_shell(
                small, true, host=no_cg
            )
        contenders["bare subprocess.run true"] = quiet(["true"], small)
        contenders[f"run_shell python -c pass (toolchain {venv})"] = lambda: run_shell(
            small, py, host=host, toolchains=(venv,)
        )
        for fn in contenders.values():  # warm caches, the probe, the mask walks
            fn()
        names = list(contenders)
        per_round: dict[str, list[float]] = {k: [] for k in names}
        cpu_round: dict[str, list[float]] = {k: [] for k in names}
        for r in range(n_rounds):
            for k in names[r % len(names) :] + names[: r % len(names)]:
                times = []
                cpu0 = _cpu_s()
                for _ in range(calls):
                    time.sleep(GAP_S)  # untimed, for every contender alike
                    t = time.perf_counter()
                    contenders[k]()
                    times.append((time.perf_counter() - t) * 1000)
                _settle()  # the work done after a call returned counts in its CPU time
                cpu_round[k].append((_cpu_s() - cpu0) / calls * 1000)
                per_round[k].append(median(times))
    big, one = f"run_shell true, {SIZES[-1]:,} files", f"run_shell true, {SIZES[0]:,} files"
    vs_small = [b / s for b, s in zip(per_round[big], per_round[one], strict=True)]
    rows = [
        (
            k,
            f"{median(v):.2f}",
            f"{min(v):.2f}-{max(v):.2f}",
            _spread([a / b for a, b in zip(v, per_round[one], strict=True)]),
            f"{median(cpu_round[k]):.2f}",
        )
        for k, v in per_round.items()
    ]
    show(
        f"[sandbox] per call, {n_rounds} rounds x {calls} calls, interleaved (ms)",
        (
            "contender",
            "median ms",
            "round min-max",
            f"vs {SIZES[0]:,} files: median (min-max)",
            "CPU ms",
        ),
        rows,
    )
    res.figures["per_call_ms"] = {k: median(v) for k, v in per_round.items()}
    res.figures["cpu_ms_per_call"] = {k: median(v) for k, v in cpu_round.items()}
    res.figures["rounds"] = n_rounds
    res.target(
        f"{SIZES[-1]:,} vs {SIZES[0]:,} files",
        f"<= {LIMIT}x",
        _spread(vs_small),
        median(vs_small) <= LIMIT,
    )
    if "bare bwrap true" in per_round:
        vs_bwrap = [
            b / s for b, s in zip(per_round[big], per_round["bare bwrap true"], strict=True)
        ]
        res.target(
            f"{SIZES[-1]:,} files vs bare bubblewrap",
            f"<= {LIMIT}x",
            _spread(vs_bwrap),
            median(vs_bwrap) <= LIMIT,
        )
    if host.cgroups.version:
        _migration(opts, res, host)
    if mode == "bwrap":
        _masks(opts, res, host)
    res.print_targets()
    return res


def _migration(opts: Options, res: Result, host: object) -> None:
    from orchestrator.sandbox import process
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
                process._rmdir_cgroup(d)
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
    from orchestrator.sandbox import masks as sandbox
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

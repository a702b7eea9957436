"""Large changesets: the worker's peak RSS for a shell call writing a big file.

Each round runs in a fresh interpreter (ru_maxrss is per process): a warm-up
call writing 1 MB (imports, the sandbox set up), then one call writing
`SIZE_MB` MB through the product's path (`run_shell` without apply, the
changeset kept with fsync as `kept.keep` does, applied, dropped). The figure
is the growth of the process's peak RSS over the warm-up; the file is
written by the sandboxed command, not by the measured process.

Contenders: the big call and, for scale, a second 1 MB call (the growth a
call costs anyway). Target (issue 14, large changesets): the big call's peak
RSS growth at most 32 MB (it was about the file's size: the bytes were read
whole, twice kept). The workspace's copy is checked against the written
bytes' sha256 every round.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench.common import Options, Result, median, scratch_dir, show

SIZE_MB = 200
TARGET_MB = 32.0
WRITER = (
    "import sys; n=int(sys.argv[2]); f=open(sys.argv[1], 'wb'); "
    "[f.write(bytes(range(256)) * 4096) for _ in range(n)]"
)
CHILD = """
import hashlib, json, resource, sys
from pathlib import Path
from orchestrator.run.steps import ShellStep
from orchestrator.sandbox import kept
from orchestrator.sandbox.apply import apply
from orchestrator.tools.shell import run_shell
work, base, writer, mb = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def call(name, n):
    step = ShellStep(command=[sys.executable, "-c", writer, name, str(n)])
    result = run_shell(work, step, apply=False)
    folder = kept.keep(base, "bench/1", result.changeset)
    apply(work, result.changeset)
    kept.drop([folder])
call("warm.bin", 1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
call("out.bin", mb)
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
h = hashlib.sha256()
with open(work / "out.bin", "rb") as f:
    while chunk := f.read(1 << 20):
        h.update(chunk)
want = hashlib.sha256()
for _ in range(mb):
    want.update(bytes(range(256)) * 4096)
print(json.dumps({"grew_mb": grew / 1024, "exact": h.hexdigest() == want.hexdigest()}))
"""


def _round(mb: int) -> tuple[float, bool]:
    with scratch_dir(f"spill-{mb}") as d:
        (d / "w").mkdir()
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(d / "w"), str(d / "kept"), WRITER, str(mb)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    out = json.loads(done.stdout.splitlines()[-1])
    return float(out["grew_mb"]), bool(out["exact"])


def run(opts: Options) -> Result:
    res = Result("spill")
    rounds = 2 if opts.quick else 3
    big: list[float] = []
    small: list[float] = []
    exact = True
    for _ in range(rounds):
        for mb, into in ((SIZE_MB, big), (1, small)):
            grew, ok = _round(mb)
            into.append(grew)
            exact = exact and ok
    rows = [
        (f"{SIZE_MB} MB write", f"{median(big):.1f}", f"{min(big):.1f}-{max(big):.1f}"),
        ("1 MB write", f"{median(small):.1f}", f"{min(small):.1f}-{max(small):.1f}"),
    ]
    show(
        f"[spill] peak RSS growth of the calling process, MB ({rounds} rounds, "
        "kept changesets fsynced, median, min-max)",
        ("call", "median", "spread"),
        rows,
    )
    res.figures = {"big_mb": big, "small_mb": small, "size_mb": SIZE_MB, "rounds": rounds}
    res.target(
        f"peak RSS growth, {SIZE_MB} MB write",
        f"<= {TARGET_MB:g} MB",
        f"{median(big):.1f} MB ({min(big):.1f}-{max(big):.1f})",
        median(big) <= TARGET_MB,
    )
    res.target("workspace bytes exact", "sha256 equal", "equal" if exact else "differ", exact)
    res.print_targets()
    return res

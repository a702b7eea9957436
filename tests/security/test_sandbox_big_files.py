"""Large changesets: a shell call writing a file far bigger than SPILL_BYTES
never holds it in memory. The content is hashed in chunks, kept as a file
(`Spilled`), recorded as hashes with a binary-style diff, kept on disk with
its own durable copy, and applied by a chunked copy: the workspace gets the
exact bytes, and the process's peak RSS grows far less than the file."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

from orchestrator.run.steps import ShellStep
from orchestrator.sandbox import kept
from orchestrator.sandbox.apply import apply
from orchestrator.sandbox.changeset import HELD_BYTES
from orchestrator.sandbox.view import remove_stale_views
from orchestrator.tools.base import Spilled
from orchestrator.tools.kinds.shell import ShellTool
from orchestrator.tools.shell import run_shell
from tests.security.test_sandbox import PY

MB = 1 << 20
BIG = 50 * MB
# Writes `name` with `mb` MB of a repeating pattern (binary) or lines (text).
WRITER = "import sys; n=int(sys.argv[2]) * 1048576; unit = bytes(range(256)) if sys.argv[3] == 'bin' else b'a line of text!\\n'*16; f=open(sys.argv[1], 'wb'); [f.write(unit * 4096) for _ in range(n // (len(unit) * 4096))]"  # noqa: E501


def _expected(mb: int, kind: str) -> str:
    unit = bytes(range(256)) if kind == "bin" else b"a line of text!\n" * 16
    h = hashlib.sha256()
    for _ in range(mb * MB // (len(unit) * 4096)):
        h.update(unit * 4096)
    return h.hexdigest()


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MB):
            h.update(chunk)
    return h.hexdigest()


def _write(name: str, mb: int, kind: str) -> ShellStep:
    return ShellStep(command=[PY, "-c", WRITER, name, str(mb), kind])


def test_a_big_text_file_is_recorded_as_hashes_and_applied_exactly(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "big.txt").write_bytes(b"old\n" * (MB // 2))  # 2 MB before: hashed, not read
    result = run_shell(work, _write("big.txt", 8, "txt"), apply=False)
    (change,) = result.changeset.changes
    assert isinstance(change.after, Spilled) and isinstance(change.before, Spilled)
    assert change.after.size == 8 * MB and change.after.sha256 == _expected(8, "txt")
    assert change.before.path is None  # only the before's hash is needed
    (event,) = ShellTool().record("c1", SimpleNamespace(edits=result.changeset.edits()))
    assert event.before_hash == hashlib.sha256(b"old\n" * (MB // 2)).hexdigest()
    assert event.after_hash == _expected(8, "txt")
    assert event.diff == (
        "diff --git a/big.txt b/big.txt\nBinary files a/big.txt and b/big.txt differ\n"
    )
    apply(work, result.changeset)
    assert _sha(work / "big.txt") == _expected(8, "txt")
    spill = result.changeset.spill
    assert spill is not None and os.path.isdir(spill)
    del result, change
    assert not os.path.exists(spill)  # the spill folder goes with its changeset


# Run in a child so its ru_maxrss is this call's alone: a warm-up call first
# (imports, sandbox set-up), then the big one; prints what the parent checks.
CHILD = """
import json, os, resource, sys
from pathlib import Path
from orchestrator.run.steps import ShellStep
from orchestrator.sandbox import kept
from orchestrator.tools.shell import run_shell
from tests.security.test_sandbox import PY
work, base, code = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
def step(mb):
    return ShellStep(command=[PY, "-c", code, "big.bin", str(mb), "bin"])
run_shell(work, step(1))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = run_shell(work, step({mb}), apply=False)
kept.keep(base, "s/1", result.changeset)
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({{"grew_kb": grew}}), flush=True)
if {crash}:
    os.kill(os.getpid(), 9)  # between the record and the apply
"""


def _child(tmp_path: Path, crash: bool) -> subprocess.CompletedProcess[str]:
    work, base = tmp_path / "w", tmp_path / "kept"
    work.mkdir(exist_ok=True)
    code = textwrap.dedent(CHILD).format(mb=BIG // MB, crash=crash)
    return subprocess.run(
        [sys.executable, "-c", code, str(work), str(base), WRITER],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_big_write_keeps_memory_bounded_and_survives_a_kill(tmp_path: Path) -> None:
    done = _child(tmp_path, crash=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    grew_mb = json.loads(done.stdout.splitlines()[-1])["grew_kb"] / 1024
    assert grew_mb < 24, f"peak RSS grew {grew_mb:.0f} MB for a {BIG // MB} MB write"
    work, base = tmp_path / "w", tmp_path / "kept"
    assert not (work / "big.bin").exists() or (work / "big.bin").stat().st_size == MB
    remove_stale_views()  # the dead worker's view and spill folder go: the kept copy stays
    (folder,) = kept.held(base, "s/1")
    changes = kept.load(folder)
    (change,) = changes.changes
    assert isinstance(change.after, Spilled) and change.after.size == BIG
    apply(work, changes)
    apply(work, changes)  # a second redelivery: idempotent
    assert _sha(work / "big.bin") == _expected(BIG // MB, "bin")
    kept.drop([folder])
    assert kept.held(base, "s/1") == []


def test_many_small_files_are_held_in_memory_only_up_to_the_budget(tmp_path: Path) -> None:
    """Files under SPILL_BYTES each, more than HELD_BYTES in all: the files
    past the budget are held as references too, and all apply exactly."""
    work = tmp_path / "w"
    work.mkdir()
    files = HELD_BYTES // (MB // 2) + 8
    code = f"[open(f'f{{i:03}}.bin', 'wb').write(bytes([i % 256]) * {MB // 2}) for i in range({files})]"
    result = run_shell(work, ShellStep(command=[PY, "-c", code]), apply=False)
    changes = result.changeset.changes
    assert len(changes) == files
    held = sum(len(c.after) for c in changes if isinstance(c.after, bytes))
    assert held <= HELD_BYTES
    assert sum(isinstance(c.after, Spilled) for c in changes) >= 8
    apply(work, result.changeset)
    for i, c in enumerate(changes):
        assert (work / c.path).read_bytes() == bytes([i % 256]) * (MB // 2)

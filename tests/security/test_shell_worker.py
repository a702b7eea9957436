"""Shell transactions through a real Celery worker (issue 14), on both
deployment shapes (SQLite + embedded broker; PostgreSQL + Redis):

- every kind of change a command makes (create, modify, delete of a tracked
  and an untracked file, rename, chmod, symlink, directory made and removed,
  a binary file) reaches the workspace exactly as the same script leaves a
  plain copy, the log holds a FileChanged per file whose content changed,
  and the replay agrees with the workspace;
- a worker process killed (SIGKILL) right after the completion is stored and
  before the changeset is applied loses nothing: the redelivered task finds
  the completion in the log and applies the changeset it kept on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from events.store import SqlEventStore
from orchestrator.run.runner import job_state
from orchestrator.sandbox.kept import CRASH_VAR
from orchestrator.tools.base import content_hash
from tests.cli_helpers import cli, cli_json

pytestmark = pytest.mark.slow

REDIS_DB = 2

# One target per kind; each script runs in the target (a git repository
# with `tracked.txt` committed and `keep.txt`, `scratch.txt`, `old/` beside).
SCRIPTS = {
    "create": "printf 'new\\n' > made.txt",
    "modify": "printf 'more\\n' >> keep.txt",
    "delete-tracked": "rm tracked.txt",
    "delete-untracked": "rm scratch.txt",
    "rename": "mv keep.txt renamed.txt",
    "chmod": "chmod 755 keep.txt",
    "symlink": "ln -s keep.txt link.txt",
    "dir-create": "mkdir -p made/empty && printf 'x = 1\\n' > made/mod.py",
    "dir-delete": "rm -r old",
    "binary": "printf '\\000\\377\\001binary' > blob.bin && printf '\\377\\376' >> keep.txt",
    # 3 MB of text, past SPILL_BYTES: held as a file, recorded as a binary file is
    "big": "head -c 3145728 /dev/zero | tr '\\000' x > big.txt",
}


@pytest.fixture
def env(deployment_env: dict[str, str]) -> dict[str, str]:
    return deployment_env


def _target(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "keep.txt").write_text("kept\n")
    (root / "scratch.txt").write_text("scratch\n")
    (root / "tracked.txt").write_text("tracked\n")
    (root / "old" / "deep").mkdir(parents=True)
    (root / "old" / "deep" / "a.txt").write_text("a\n")
    (root / "old" / "b.txt").write_text("b\n")
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "tracked.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)


def _tree(root: Path) -> dict[str, tuple[str, ...]]:
    """Every entry below `root` but .git: kind, mode, and bytes or target."""
    out: dict[str, tuple[str, ...]] = {}
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in dirs + names:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            mode = oct(stat.S_IMODE(st.st_mode))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode)
            else:
                out[rel] = ("file", mode, content_hash(path.read_bytes()) or "")
    return out


def _spec(tmp_path: Path, kinds: list[str], crash_once: bool = False) -> Path:
    targets = "\n".join(
        f"  - path: t/{k}\n    vars: {{script: {json.dumps(SCRIPTS[k])}}}" for k in kinds
    )
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: shell-kinds\ntargets:\n"
        + targets
        + "\nsteps:\n  - kind: shell\n    name: change\n"
        + "    command: ['sh', '-c', '{{ vars.script }}']\n"
        + "  - kind: shell\n    name: look\n    command: ['ls']\n"
    )
    return spec


def test_every_kind_of_change_reaches_the_workspace_the_log_and_the_replay(env, tmp_path: Path):
    kinds = sorted(SCRIPTS)
    want = {}
    for k in kinds:
        _target(tmp_path / "t" / k)
        plain = tmp_path / "plain" / k
        _target(plain)
        before = _tree(plain)
        subprocess.run(["sh", "-c", SCRIPTS[k]], cwd=plain, check=True)
        want[k] = (before, _tree(plain))
    spec = _spec(tmp_path, kinds)
    done = cli(env, "run", str(spec), "--base-dir", str(tmp_path), "--allow-destructive", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    by_target = {Path(s["target"]).name: s for s in job["sessions"]}
    assert {s["status"] for s in job["sessions"]} == {"completed"}, job
    for k in kinds:
        work = tmp_path / "t" / k
        before, after = want[k]
        assert _tree(work) == after, k  # as the same script leaves a plain copy
        replayed = cli_json(env, "audit", "replay", by_target[k]["session_id"])
        recorded = {c["path"]: c["after_hash"] for c in replayed["session"]["files_changed"]}
        shown = {
            p for p in before.keys() | after.keys() if _git(before.get(p)) != _git(after.get(p))
        }
        assert set(recorded) == shown, k  # what `git diff` would show
        for path, after_hash in recorded.items():
            assert after_hash == (_git(after.get(path)) or (None,))[0], (k, path)
        assert replayed["session"]["patch"] == by_target[k]["patch"], k
        assert os.stat(work).st_uid == os.getuid()
    kept = Path(env["ORCH_STATE_DIR"]) / "kept-changesets"
    assert not kept.exists() or not any(kept.iterdir())


def _git(entry: tuple[str, ...] | None) -> tuple[str | None, str] | None:
    """An entry as git sees it: its content's hash (a symlink's: its
    target's) and its mode; None for a folder or nothing."""
    if entry is None or entry[0] == "dir":
        return None
    if entry[0] == "link":
        return content_hash(os.fsencode(entry[1])), "120000"
    return entry[2], "100755" if int(entry[1], 8) & 0o100 else "100644"


def test_a_worker_killed_between_the_record_and_the_apply_loses_nothing(env, tmp_path: Path):
    """The hook kills the worker process (SIGKILL) once, right after the
    completion of the first shell call is stored: nothing of the change is in
    the workspace yet, but it is in the log and kept on disk. The task is
    redelivered, finds the completion, applies the kept changeset, and the
    job goes on."""
    kinds = ["big", "binary", "dir-delete", "modify"]
    for k in kinds:
        _target(tmp_path / "t" / k)
    flag = tmp_path / "kill-once"
    flag.write_text("")
    spec = _spec(tmp_path, kinds)
    submitted = cli(env, "submit", str(spec), "--base-dir", str(tmp_path), "--allow-destructive")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli.main", "worker", "-c", "1"],
            env={**env, CRASH_VAR: str(flag)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    store = SqlEventStore(
        env.get("ORCH_STORE_URL") or f"sqlite:///{env['ORCH_STATE_DIR']}/events.sqlite"
    )
    try:
        deadline = time.monotonic() + 240
        while job_state(store, job_id).status == "running":
            assert time.monotonic() < deadline, (
                "the job did not complete: " + log.read_text()[-3000:]
            )
            time.sleep(0.3)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
    assert not flag.exists(), "the hook never fired"
    assert "SIGKILL" in log.read_text(), log.read_text()[-3000:]
    job = job_state(store, job_id)
    assert job.status == "completed", job
    for k in kinds:
        plain = tmp_path / "plain" / k
        _target(plain)
        subprocess.run(["sh", "-c", SCRIPTS[k]], cwd=plain, check=True)
        assert _tree(tmp_path / "t" / k) == _tree(plain), k
    for ref in job.sessions:
        events = list(store.read_stream(ref.session_id))
        completed = [e.payload.call_id for e in events if e.type == "ToolCallCompleted"]
        assert sorted(completed) == sorted(set(completed)) and len(completed) == 2
    kept = Path(env["ORCH_STATE_DIR"]) / "kept-changesets"
    assert not kept.exists() or not any(kept.iterdir())
    shutil.rmtree(tmp_path / "plain")

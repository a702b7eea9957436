"""Shell steps are transactions (issue 14): what a command changes is judged,
recorded as FileChanged with the call's completion and only then applied; a
refused or failed command leaves the workspace as it was; a call interrupted
by a dying worker runs again and both attempts are in the log. Real store,
real runner, real sandbox."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from events import payloads as p
from events.envelope import NewEvent, new_id
from events.history import history
from events.store import SqlEventStore, open_store
from orchestrator.run.runner import Runner, Ticket
from orchestrator.run.steps import ShellStep

SCRIPTS = {
    "create": "printf 'new\\n' > made.txt",
    "modify": "printf 'changed\\n' >> keep.txt",
    "delete-untracked": "rm scratch.txt",
    "mode": "chmod +x keep.txt",
    "nested": "mkdir -p pkg/sub && printf 'x = 1\\n' > pkg/sub/mod.py",
    "binary": "printf '\\000\\001\\002' > blob.bin",
    "many": "printf 1 > f1.txt; printf 2 > f2.txt; printf 3 > f3.txt; rm scratch.txt",
    "new-script": "printf '#!/bin/sh\\n' > run.sh && chmod +x run.sh",
    "mode-and-content": "printf 'more\\n' >> keep.txt && chmod +x keep.txt",
    "mode-invisible-to-git": "chmod 600 keep.txt",
    "symlink": "ln -s keep.txt link.txt",
    "retarget": "ln -sfn scratch.txt old-link",
    "unlink": "rm old-link",
    "file-to-link": "rm scratch.txt && ln -s keep.txt scratch.txt",
    "link-to-file": "rm old-link && printf 'now a file\\n' > old-link",
}


def _workspace(tmp_path: Path) -> Path:
    work = tmp_path / "repo"
    work.mkdir()
    (work / "keep.txt").write_text("kept\n")
    (work / "scratch.txt").write_text("scratch\n")
    (work / "old-link").symlink_to("keep.txt")
    return work


def _ticket(work: Path, step: ShellStep, **extra: object) -> Ticket:
    return Ticket(
        job_id=new_id(),
        session_id=new_id(),
        target="repo",
        path=str(work),
        steps=(step.label,),
        sessions_total=1,
        **extra,  # type: ignore[arg-type]
    )


def _run(store: SqlEventStore, work: Path, step: ShellStep, **extra: object) -> tuple[str, str]:
    t = _ticket(work, step, **extra)
    return t.session_id, Runner(store, "worker:test").run_step(t, 0, step, last=True)


def _tree(root: Path) -> dict[str, tuple[str, str]]:
    """Each file as git sees it: its content's hash (a symlink's: its
    target's) and its git mode (100644, 100755 or 120000)."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel.startswith(".git/"):
                continue
            if path.is_symlink():
                data, mode = os.fsencode(os.readlink(path)), "120000"
            else:
                data, mode = (
                    path.read_bytes(),
                    "100755" if path.stat().st_mode & 0o100 else "100644",
                )
            out[rel] = (hashlib.sha256(data).hexdigest(), mode)
    return out


@pytest.mark.parametrize("kind", sorted(SCRIPTS))
def test_every_change_a_command_makes_is_recorded_and_replays_to_the_workspace(
    tmp_path: Path, kind: str
):
    """Every change `git diff` would show is recorded: content, an executable
    bit, a symlink made, retargeted or removed, a file turned into a link or
    back (a permission bit git does not show is not). The recorded patch,
    applied by git to the workspace as it was, gives the workspace as the
    call left it."""
    work = _workspace(tmp_path)
    before = _tree(work)
    copy = tmp_path / "replayed"
    subprocess.run(["cp", "-a", str(work), str(copy)], check=True)
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    # Elevated: the command-level policy would ask before `rm`/`chmod` run.
    sid, status = _run(store, work, ShellStep(command=["sh", "-c", SCRIPTS[kind]]), elevated_by="t")
    assert status == "completed", history(store, sid).session.error
    after = _tree(work)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    state = history(store, sid)
    recorded = {c.path: c for c in state.session.files_changed}
    assert set(recorded) == changed
    assert (kind == "mode-invisible-to-git") is not bool(changed)
    for path in changed:
        want = after[path][0] if path in after else None
        assert recorded[path].after_hash == want
    if "\nBinary files " not in state.session.patch:  # binary: recorded by hash only
        if state.session.patch:
            (tmp_path / "p.diff").write_text(state.session.patch)
            subprocess.run(["git", "apply", str(tmp_path / "p.diff")], cwd=copy, check=True)
        assert _tree(copy) == after
    assert state.session.status == "completed"
    assert os.stat(work).st_uid == os.getuid()
    assert {os.lstat(work / k).st_uid for k in after} <= {os.getuid()}


def test_a_refused_changeset_is_a_recorded_deny_and_nothing_reaches_the_workspace(
    tmp_path: Path,
):
    work = _workspace(tmp_path)
    before = _tree(work)
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    # The name is built at run time, so only the changeset shows it (a
    # literal `> .ENV` is denied before anything runs: path rules fold case).
    script = "printf 'x\\n' > ok.txt && python3 -c \"open('.E' + 'NV', 'w').write('TOKEN=1')\""
    sid, status = _run(store, work, ShellStep(command=["sh", "-c", script]), elevated_by="t")
    assert status == "failed"
    assert _tree(work) == before
    state = history(store, sid)
    [entry] = state.ledger.entries
    assert entry.decision == "deny" and entry.rule_id
    [call] = state.session.calls
    assert call.error == "ChangesetRefused"
    assert state.session.files_changed == ()


def test_a_failed_command_is_rolled_back(tmp_path: Path):
    work = _workspace(tmp_path)
    before = _tree(work)
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    step = ShellStep(command=["sh", "-c", "echo x > half.txt; exit 3"])
    sid, status = _run(store, work, step, elevated_by="t")
    assert status == "failed"
    assert _tree(work) == before
    assert history(store, sid).session.files_changed == ()


def test_deleting_a_tracked_file_needs_elevation(tmp_path: Path):
    import subprocess

    work = _workspace(tmp_path)
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run(["git", "-C", str(work), "add", "keep.txt"], check=True)
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    step = ShellStep(command=["python3", "-c", "import os; os.remove('keep.txt')"])
    sid, status = _run(store, work, step)
    assert status == "failed" and (work / "keep.txt").exists()
    assert history(store, sid).ledger.entries[0].rule_id == "destructive-rm"
    sid, status = _run(store, work, step, elevated_by="alice")
    assert status == "completed" and not (work / "keep.txt").exists()
    assert [c.after_hash for c in history(store, sid).session.files_changed] == [None]


def test_an_interrupted_attempt_runs_again_and_both_are_in_the_log(tmp_path: Path):
    """A worker died after ToolCallStarted: the workspace is untouched (the
    command wrote into its own view), so the redelivery runs the command
    again, without `idempotent: true`, and records the interrupted attempt."""
    work = _workspace(tmp_path)
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    step = ShellStep(command=["sh", "-c", "printf 'once\\n' >> keep.txt"])
    ticket = _ticket(work, step)
    sid = ticket.session_id
    runner = Runner(store, "worker:test")
    call_id = f"{sid}/1"
    # What the first attempt recorded before its worker died.
    runner._start(ticket, runner.load(sid), None)
    events = [
        p.TurnStarted(turn=1, name=step.label, kind="shell"),
        p.ToolCallRequested(call_id=call_id, turn=1, tool="shell", args={}),
        p.PermissionDecided(
            call_id=call_id, decision="allow", rule_id="r", policy_hash="h", reason=""
        ),
        p.ToolCallStarted(call_id=call_id),
    ]
    seq = sum(1 for _ in store.read_stream(sid))
    store.append(
        sid,
        [NewEvent.create(e, actor="worker:dead", correlation_id=ticket.job_id) for e in events],
        seq,
    )
    status = Runner(store, "worker:second").run_step(ticket, 0, step, last=True)
    assert status == "completed"
    assert (work / "keep.txt").read_text() == "kept\nonce\n"
    types = [e.type for e in store.read_stream(sid)]
    assert types.count("ToolCallStarted") == 1
    assert types.index("ToolCallRedelivered") < types.index("ToolCallCompleted")
    [call] = history(store, sid).session.calls
    assert [(a.attempt, a.worker, a.outcome) for a in call.attempts] == [
        (1, "worker:dead", "interrupted"),
        (2, "worker:second", "completed"),
    ]


def test_what_the_ignore_files_hide_is_applied_but_not_in_the_patch(tmp_path: Path):
    """Caches a command leaves (`__pycache__`, build output) reach the
    workspace, as they would outside the sandbox, but not the recorded
    changes: the session's patch is what `git diff` would show. The log
    still lists them (IgnoredFilesChanged): a planted `.pyc` runs code too."""
    import subprocess

    work = _workspace(tmp_path)
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    (work / ".gitignore").write_text("__pycache__/\nbuild/\n")
    script = "mkdir -p __pycache__ build && printf x > __pycache__/m.pyc && printf y > build/o && printf z >> keep.txt"
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    sid, status = _run(store, work, ShellStep(command=["sh", "-c", script]), elevated_by="t")
    assert status == "completed", history(store, sid).session.error
    assert (work / "__pycache__" / "m.pyc").read_text() == "x"
    assert (work / "build" / "o").read_text() == "y"
    assert [c.path for c in history(store, sid).session.files_changed] == ["keep.txt"]
    [listed] = [e.payload for e in store.read_stream(sid) if e.type == "IgnoredFilesChanged"]
    assert (listed.paths, listed.total) == (["__pycache__/m.pyc", "build/o"], 2)
    assert listed.call_id == f"{sid}/1"


def test_a_tracked_delete_asks_in_a_repository_another_user_owns(tmp_path: Path):
    """A root worker on a user's clone: git's "dubious ownership" must not
    make a tracked file look untracked (its delete would then go through)."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs a worker that is root, to own the repository as another user")
    work = _workspace(tmp_path)
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run(["git", "-C", str(work), "add", "keep.txt"], check=True)
    subprocess.run(["chown", "-R", "65534:65534", str(work)], check=True)
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    step = ShellStep(command=["python3", "-c", "import os; os.remove('keep.txt')"])
    sid, status = _run(store, work, step)
    assert status == "failed" and (work / "keep.txt").exists()
    assert history(store, sid).ledger.entries[0].rule_id == "destructive-rm"


def test_a_tracked_file_in_an_ignored_folder_is_in_the_patch(tmp_path: Path):
    """`git diff` shows a tracked file's change whatever `.gitignore` says:
    so does the record (the workspace is a subfolder of the repository, and
    the file's name is a glob to git unless taken literally)."""
    import subprocess

    top = tmp_path / "mono"
    top.mkdir()
    work = _workspace(top)
    (work / "build").mkdir()
    (work / "build" / "[id].cfg").write_text("v1\n")
    (work / "build" / "i.cfg").write_text("untracked\n")
    (work / ".gitignore").write_text("build/\n")
    subprocess.run(["git", "init", "-q", str(top)], check=True)
    subprocess.run(["git", "-C", str(top), "add", "-f", "repo/build/[id].cfg"], check=True)
    script = "printf v2 > 'build/[id].cfg' && printf again > build/i.cfg"
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    sid, status = _run(store, work, ShellStep(command=["sh", "-c", script]), elevated_by="t")
    assert status == "completed", history(store, sid).session.error
    assert [c.path for c in history(store, sid).session.files_changed] == ["build/[id].cfg"]
    assert (work / "build" / "i.cfg").read_text() == "again"


def test_what_the_sandbox_hid_is_recorded_with_the_call(tmp_path: Path):
    """A refusal the command never saw (`.env` shown empty) is in the log."""
    work = _workspace(tmp_path)
    (work / ".env").write_text("TOKEN=s3cr3t\n")
    (work / "keys").mkdir()
    (work / "keys" / "id.pem").write_text("KEY\n")
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    (work / "show.sh").write_text("cat .env keys/id.pem keep.txt\n")  # no name on the command line
    step = ShellStep(command=["sh", "show.sh"])
    sid, status = _run(store, work, step, elevated_by="t")
    assert status == "completed", history(store, sid).session.error
    [hid] = [e.payload for e in store.read_stream(sid) if e.type == "PathsHidden"]
    assert hid.paths == [".env", "keys/id.pem"] and hid.total == 2
    [call] = history(store, sid).session.calls
    assert hid.call_id == call.call_id and "s3cr3t" not in (call.output or "")


def test_a_commit_in_a_step_is_applied_and_only_the_worktree_is_diffed(tmp_path: Path):
    """A step that commits (git's identity in its env: the sandbox has no
    user config): the commit reaches the repository; the patch holds the
    worktree's change as `git diff` would, and git's own folder (objects,
    refs, index) is listed, not diffed."""
    work = _workspace(tmp_path)
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "keep.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    who = {f"GIT_{w}_{f}": "bot" for w in ("AUTHOR", "COMMITTER") for f in ("NAME", "EMAIL")}
    step = ShellStep(
        command=["sh", "-c", "printf 'more\\n' >> keep.txt && git commit -qam step"], env=who
    )
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    sid, status = _run(store, work, step)
    assert status == "completed", history(store, sid).session.error
    log = subprocess.run([*git, "log", "--format=%an %s"], capture_output=True, text=True)
    assert log.stdout.splitlines() == ["bot step", "t init"]
    assert [c.path for c in history(store, sid).session.files_changed] == ["keep.txt"]
    [listed] = [e.payload for e in store.read_stream(sid) if e.type == "IgnoredFilesChanged"]
    assert ".git/index" in listed.paths and all(x.startswith(".git/") for x in listed.paths)

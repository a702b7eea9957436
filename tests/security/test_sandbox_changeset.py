"""Shell calls as transactions, in a real sandbox: each kind of change comes
back as a Changeset and nothing reaches the workspace until it is applied;
the overlay and the copy view report the same changeset; applying is
idempotent; a supervisor killed mid-write leaves the workspace as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import PolicyDenied, ToolInputError
from orchestrator.guard.changeset import judge, shell_denials
from orchestrator.guard.policy import DEFAULT_POLICY
from orchestrator.run.steps import ShellStep
from orchestrator.sandbox import runtime as sandbox
from orchestrator.sandbox.changeset import Change, Changeset, Kind
from orchestrator.sandbox.view import remove_stale_views
from orchestrator.tools.shell import ShellResult, run_shell
from tests.security.test_sandbox import HOST, _need_bwrap

DENIALS = shell_denials(DEFAULT_POLICY)


def _views() -> list[str]:
    """The `view` fixture's parameters this machine can run."""
    return ["overlay", "copy"] if HOST.overlay_problem is None else ["copy"]


@pytest.fixture(params=_views())
def view(request: pytest.FixtureRequest) -> str:
    _need_bwrap()
    return str(request.param)


def snapshot(ws: Path) -> dict[str, tuple[int, int, int, bytes | str | None]]:
    """Every entry's mode, owner, group and content (or link target)."""
    out: dict[str, tuple[int, int, int, bytes | str | None]] = {}
    for p in sorted([ws, *ws.rglob("*")]):
        st = p.lstat()
        data: bytes | str | None = None
        if p.is_symlink():
            data = os.readlink(p)
        elif p.is_file():
            data = p.read_bytes()
        out[str(p.relative_to(ws))] = (st.st_mode, st.st_uid, st.st_gid, data)
    return out


def tree(ws: Path) -> Path:
    (ws / "src").mkdir(parents=True)
    (ws / "src/app.py").write_text("def fetch_user():\n    return 1\n")
    (ws / "src/util.py").write_text("X = 1\n")
    (ws / "old").mkdir()
    (ws / "old/a.txt").write_text("a\n")
    (ws / "old/b.txt").write_text("b\n")
    (ws / "run.sh").write_text("echo hi\n")
    (ws / "link").symlink_to("src/util.py")
    return ws


def shell(ws: Path, script: str, view: str, **kw: Any) -> ShellResult:
    step = ShellStep(command=["sh", "-c", script], timeout_s=30)
    return run_shell(ws, step, host=HOST, view=view, apply=False, **kw)  # type: ignore[arg-type]


KINDS: dict[str, tuple[str, list[tuple[str, Kind]]]] = {
    "created": ("echo new > src/new.py", [("src/new.py", Kind.CREATED)]),
    "modified": ("sed -i s/fetch_user/load_user/ src/app.py", [("src/app.py", Kind.MODIFIED)]),
    "deleted": ("rm src/util.py", [("src/util.py", Kind.DELETED)]),
    "mode": ("chmod 755 run.sh", [("run.sh", Kind.MODE)]),
    "symlink": ("ln -s app.py src/alias", [("src/alias", Kind.SYMLINK)]),
    "symlink changed": ("ln -sfn src/app.py link", [("link", Kind.SYMLINK)]),
    "hardlink": ("ln src/util.py src/twin", [("src/twin", Kind.HARDLINK)]),
    "fifo": ("mkfifo src/pipe", [("src/pipe", Kind.SPECIAL)]),
    "directory": ("mkdir -p pkg/sub", [("pkg", Kind.DIRECTORY), ("pkg/sub", Kind.DIRECTORY)]),
    "folder removed": (
        "rm -r old",
        [("old", Kind.DELETED), ("old/a.txt", Kind.DELETED), ("old/b.txt", Kind.DELETED)],
    ),
    "folder replaced": (
        "rm -r old && mkdir old && echo c > old/c.txt",
        [
            ("old/a.txt", Kind.DELETED),
            ("old/b.txt", Kind.DELETED),
            ("old/c.txt", Kind.CREATED),
        ],
    ),
    "renamed": ("mv src/util.py src/helpers.py", [("src/helpers.py", Kind.CREATED)]),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_change_comes_back_unapplied(tmp_path: Path, view: str, kind: str) -> None:
    ws = tree(tmp_path / "ws")
    before = snapshot(ws)
    script, expected = KINDS[kind]
    result = shell(ws, script, view)
    assert snapshot(ws) == before  # nothing reached the workspace
    got = {(c.path, c.kind) for c in result.changeset.changes}
    assert set(expected) <= got, got
    assert not result.applied


def test_the_changeset_carries_contents_and_modes(tmp_path: Path, view: str) -> None:
    ws = tree(tmp_path / "ws")
    script = "sed -i s/fetch_user/load_user/ src/app.py; chmod 700 src/app.py; rm old/a.txt"
    cs = shell(ws, script, view).changeset
    by = {c.path: c for c in cs.changes}
    app = by["src/app.py"]
    assert (app.before, app.after) == (
        b"def fetch_user():\n    return 1\n",
        b"def load_user():\n    return 1\n",
    )
    assert (app.mode_before, app.mode_after) == (0o644, 0o700)
    assert by["old/a.txt"] == Change("old/a.txt", Kind.DELETED, before=b"a\n", mode_before=0o644)
    assert {e.path for e in cs.edits()} == {"src/app.py", "old/a.txt"}


def test_overlay_and_copy_report_the_same_changeset(tmp_path: Path) -> None:
    _need_bwrap()
    if HOST.overlay_problem is not None:
        pytest.skip(f"no overlay here: {HOST.overlay_problem}")
    script = (
        "sed -i s/1/2/ src/util.py; rm -r old; mkdir -p pkg/a; echo x > pkg/a/x.py; "
        "chmod 755 run.sh; ln -s ../src pkg/src; rm link"
    )
    got = [shell(tree(tmp_path / v), script, v).changeset.changes for v in ("overlay", "copy")]
    assert got[0] == got[1]


def test_applying_twice_is_the_same_as_once_and_the_workspace_ends_as_the_view(
    tmp_path: Path, view: str
) -> None:
    ws = tree(tmp_path / "ws")
    script = (
        "sed -i s/fetch_user/load_user/ src/app.py; rm -r old; mkdir -p pkg/a; "
        "echo x > pkg/a/x.py; chmod 755 run.sh; ln -sfn src/app.py link; "
        "cp -a . /tmp/expected"
    )
    cs = shell(ws, script, view).changeset
    twin = tree(tmp_path / "twin")
    subprocess.run(
        ["sh", "-c", script.replace("/tmp/expected", "/dev/null")], cwd=twin, check=False
    )
    sandbox.apply(ws, cs)
    once = snapshot(ws)
    sandbox.apply(ws, cs)
    assert snapshot(ws) == once
    assert {k: v[0] & 0o777 for k, v in once.items()} == {
        k: v[0] & 0o777 for k, v in snapshot(twin).items()
    }
    assert {k: v[3] for k, v in once.items()} == {k: v[3] for k, v in snapshot(twin).items()}


def test_an_apply_cut_short_is_finished_by_the_next(tmp_path: Path, view: str) -> None:
    ws = tree(tmp_path / "ws")
    cs = shell(ws, "echo 1 > a.txt; echo 2 > b.txt; rm src/util.py; echo 3 > c.txt", view).changeset
    sandbox.apply(ws, Changeset(cs.changes[:2]))  # a crash after the first writes
    sandbox.apply(ws, cs)
    assert sorted(p.name for p in ws.iterdir()) == [
        "a.txt",
        "b.txt",
        "c.txt",
        "link",
        "old",
        "run.sh",
        "src",
    ]
    assert not (ws / "src/util.py").exists()


def test_apply_refuses_a_file_changed_meanwhile(tmp_path: Path, view: str) -> None:
    ws = tree(tmp_path / "ws")
    cs = shell(ws, "echo new > src/util.py", view).changeset
    (ws / "src/util.py").write_text("someone else\n")
    with pytest.raises(ToolInputError, match="changed in the workspace while the command ran"):
        sandbox.apply(ws, cs)
    assert (ws / "src/util.py").read_text() == "someone else\n"


@pytest.mark.parametrize(
    ("script", "rule"),
    [
        ("echo SECRET=1 > .ENV", "deny-secrets"),
        ("mkdir -p .git/hooks && printf '#!/bin/sh\\n' > .git/hooks/pre-commit", "deny-git-hooks"),
        ("ln -s /etc/passwd pw", "symlink-escape"),
        ("ln src/app.py hl", "hardlink"),
        ("mkfifo fifo", "special-file"),
        (
            "mkdir -p .git/modules/lib && printf '[core]\\n\\tfsmonitor = touch /tmp/x\\n' "
            "> .git/modules/lib/config",
            "deny-git-config",
        ),
        (
            "mkdir -p .git/modules/lib/hooks && echo x > .git/modules/lib/hooks/post-checkout",
            "deny-git-hooks",
        ),
        ("cp /bin/true own && chmod 4755 own", "setid-bits"),
        ("chmod g+s src/app.py", "setid-bits"),
        ("printf x > \"$(printf 'bad\\377')\"", "path-encoding"),
        ("ln -s \"$(printf 'to\\377')\" odd-link", "path-encoding"),
    ],
)
def test_a_refused_changeset_leaves_the_workspace_untouched(
    tmp_path: Path, view: str, script: str, rule: str
) -> None:
    ws = tree(tmp_path / "ws")
    before = snapshot(ws)
    cs = shell(ws, script + "; echo ok > fine.txt", view).changeset
    assert judge(cs, DENIALS, (), str(ws)).rule_id == rule
    step = ShellStep(command=["sh", "-c", script + "; echo ok > fine.txt"], timeout_s=30)
    with pytest.raises(PolicyDenied, match=rule):
        run_shell(ws, step, host=HOST, view=view)  # type: ignore[arg-type]
    assert snapshot(ws) == before


def test_a_deleted_tracked_file_asks(tmp_path: Path, view: str) -> None:
    ws = tree(tmp_path / "ws")
    cs = shell(ws, "rm src/app.py", view).changeset
    verdict = judge(cs, DENIALS, {"src/app.py"}, str(ws))
    assert (verdict.decision, verdict.rule_id) == ("ask", "destructive-rm")


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from orchestrator.run.steps import ShellStep
    from orchestrator.tools.shell import run_shell
    script = "echo started > started; while :; do echo line >> src/app.py; echo x >> big; done"
    run_shell(Path(sys.argv[1]), ShellStep(command=["sh", "-c", script], timeout_s=60),
              view=sys.argv[2])
    """
)


def test_a_supervisor_killed_mid_write_leaves_the_workspace_as_it_was(
    tmp_path: Path, view: str
) -> None:
    ws = tree(tmp_path / "ws")
    os.chown(ws / "src/app.py", 1234, 1234)
    before = snapshot(ws)
    for _ in range(3):
        worker = subprocess.Popen([sys.executable, "-c", WRITER, str(ws), view])
        deadline = time.monotonic() + 60
        while not _writing(worker.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert snapshot(ws) == before  # byte for byte, owners and modes too
    # The killed call's processes die with it, but not at once: a folder one of
    # them still writes into may survive a sweep; the next sweep removes it.
    deadline = time.monotonic() + 30
    while True:
        remove_stale_views()
        prefix = f"orch-sandbox-view-{worker.pid}-"
        left = [e for e in os.listdir("/tmp") if e.startswith(prefix)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert left == []


def _writing(pid: int) -> bool:
    """Whether the command of worker `pid` has started (its view shows it)."""
    prefix = f"orch-sandbox-view-{pid}-"
    for entry in os.listdir("/tmp"):
        if entry.startswith(prefix):
            root = Path("/tmp", entry)
            if (root / "upper/started").exists() or (root / "copy/started").exists():
                return True
    return False


def test_pytest_runs_with_a_toolchain_and_a_usable_tmp(tmp_path: Path, view: str) -> None:
    ws = tmp_path / "ws"
    (ws / "tests").mkdir(parents=True)
    (ws / "tests/test_x.py").write_text(
        "import tempfile\n"
        "def test_tmp(tmp_path):\n"
        "    (tmp_path / 'f').write_text('x')\n"
        "    with tempfile.NamedTemporaryFile() as f:\n"
        "        f.write(b'y')\n"
    )
    venv = str(Path(sys.executable).parent.parent)
    step = ShellStep(
        command=["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"], timeout_s=120
    )
    result = run_shell(ws, step, host=HOST, view=view, toolchains=(venv,), apply=False)  # type: ignore[arg-type]
    assert "1 passed" in result.output
    assert result.changeset.paths == () or all("__pycache__" in p for p in result.changeset.paths)


def test_a_missing_toolchain_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ToolInputError, match="toolchains:"):
        run_shell(tmp_path, ShellStep(command=["true"]), toolchains=("/nowhere/venv",))


def test_a_venv_hard_linked_from_a_cache_works_as_a_toolchain(tmp_path: Path, view: str) -> None:
    """`uv` fills a venv with hard links to its cache: as a declared
    toolchain it is shown as it is (bound read-only over its own path), while
    a hard link out of the workspace elsewhere stays hidden; and no mask is
    mounted below a toolchain (each would be a mount, for nothing)."""
    cache, ws = tmp_path / "cache", tmp_path / "ws"
    lib = ws / ".venv" / "lib"
    lib.mkdir(parents=True)
    cache.mkdir()
    for i in range(50):
        (cache / f"m{i}.py").write_text(f"X = {i}\n")
        os.link(cache / f"m{i}.py", lib / f"m{i}.py")
    (cache / "secret.txt").write_text("s3cret\n")
    os.link(cache / "secret.txt", ws / "stray.txt")
    venv = str((ws / ".venv").resolve())
    step = ShellStep(command=["sh", "-c", "cat .venv/lib/m7.py; cat stray.txt; echo end"])
    result = run_shell(ws, step, host=HOST, view=view, toolchains=(venv,), apply=False)  # type: ignore[arg-type]
    assert "X = 7" in result.output and "end" in result.output
    assert "s3cret" not in result.output
    masks = sandbox.workspace_masks(ws.resolve(), ((".env",),))
    assert len(masks) == 51  # the 50 venv files and stray.txt are hard-linked out
    argv = sandbox.bwrap_argv(
        "bwrap",
        sandbox.Request(
            argv=("true",),
            workspace=str(ws.resolve()),
            cwd=str(ws.resolve()),
            toolchains=(venv,),
            masks=masks,
            empty_file="/empty",
        ),
    )
    bound = [argv[i + 2] for i, a in enumerate(argv) if a == "--ro-bind"]
    assert str(ws.resolve() / "stray.txt") in bound
    assert not [b for b in bound if b.startswith(venv + "/")]


def test_a_program_outside_the_view_is_refused_naming_toolchains(tmp_path: Path) -> None:
    """The worker's own venv is not in the sandbox's view: its python is
    refused before anything runs, with the setting that shows it; named as a
    toolchain, it runs (its base installation shown with it)."""
    _need_bwrap()
    venv = Path(sys.prefix)
    if venv == Path(sys.base_prefix) or str(venv).startswith(("/usr/", "/tmp/")):
        pytest.skip("the tests run from a venv outside the system folders")
    step = ShellStep(command=[str(venv / "bin" / "python"), "-c", "print('ran')"])
    with pytest.raises(ToolInputError, match="outside what the sandbox shows.*toolchains:"):
        run_shell(tmp_path, step, host=HOST, apply=False)
    result = run_shell(tmp_path, step, host=HOST, toolchains=(str(venv),), apply=False)
    assert result.output.strip() == "ran"

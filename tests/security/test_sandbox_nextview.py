"""The next call's view, made between calls (`sandbox/nextview.py`): a call
taking it sees the workspace as of the call, not as of when it was made,
and writes into an upper directory of its own; a workspace replaced
meanwhile gets a view of its own."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from orchestrator.run.steps import ShellStep
from orchestrator.sandbox import aftercall, mountns, nextview
from orchestrator.sandbox.changeset import Kind
from orchestrator.tools.shell import ShellResult, run_shell
from tests.security.test_sandbox import HOST, _need_bwrap


@pytest.fixture(autouse=True)
def overlay() -> None:
    _need_bwrap()
    if HOST.overlay_problem is not None:
        pytest.skip(f"no overlay view here: {HOST.overlay_problem}")


def sh(ws: Path, script: str) -> ShellResult:
    step = ShellStep(command=["sh", "-c", script], timeout_s=30)
    return run_shell(ws, step, host=HOST, view="overlay", apply=False)


def ready(ws: Path) -> Path:
    """The view made for the next call over `ws` (after the last call)."""
    sh(ws, "true")
    aftercall.settle()
    folder = nextview.ready_view()
    assert folder is not None and folder.exists()
    # A root worker's is mounted already, in its own mount namespace.
    assert nextview._ready[os.getpid()].view.inplace == (mountns.mounts_folder() is not None)
    assert os.listdir(folder / "upper") == []
    return folder


def test_a_view_made_before_the_call_shows_the_workspace_as_of_the_call(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "src/old").mkdir(parents=True)
    (ws / "src/app.py").write_text("before\n")
    (ws / "src/gone.py").write_text("x\n")
    (ws / "src/old/a.txt").write_text("a\n")
    folder = ready(ws)
    # The workspace changes after the view was made (a changeset applied, a
    # file tool's write): every kind of change shows in the call taking it.
    (ws / "src/app.py").write_text("after\n")
    (ws / "src/gone.py").unlink()
    (ws / "src/new.py").write_text("new\n")
    (ws / "src/old").rename(ws / "src/moved")
    os.chmod(ws / "src/app.py", 0o600)
    result = sh(
        ws,
        "cat src/app.py; ls src; ls src/moved; stat -c %a src/app.py; echo made > src/made.txt",
    )
    assert nextview.ready_view() != folder  # it was taken
    assert result.output == "after\napp.py\nmoved\nnew.py\na.txt\n600\n"
    assert [(c.path, c.kind) for c in result.changeset.changes] == [("src/made.txt", Kind.CREATED)]
    assert not (ws / "src/made.txt").exists()  # nothing reached the workspace


def test_each_call_writes_into_an_upper_directory_of_its_own(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    first = sh(ws, "echo 1 > one")
    second = sh(ws, "ls; echo 2 > two")
    assert second.output == ""  # the first call's write was never applied
    assert [c.path for c in first.changeset.changes] == ["one"]
    assert [c.path for c in second.changeset.changes] == ["two"]


def test_a_workspace_replaced_between_calls_is_not_seen_through_the_old_view(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "f").write_text("old tree\n")
    ready(ws)
    shutil.rmtree(ws)
    ws.mkdir()
    (ws / "f").write_text("new tree\n")
    assert sh(ws, "cat f").output == "new tree\n"


def test_a_call_over_another_workspace_makes_its_own_view(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for ws in (a, b):
        ws.mkdir()
        (ws / "name").write_text(f"{ws.name}\n")
    ready(a)
    assert sh(b, "cat name").output == "b\n"
    aftercall.settle()
    assert sh(b, "cat name").output == "b\n"  # through the one made for b
    assert sh(a, "cat name").output == "a\n"


def test_a_worker_leaving_removes_its_ready_view(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    folder = ready(ws)
    nextview.drop()  # what runs at exit
    assert not folder.exists()
    assert nextview.ready_view() is None

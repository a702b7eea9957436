"""A chunk's edits staged ahead and made durable together
(`tools.applying.prestaged`): the same files as applying one by one, nothing
left behind for a plan that was not applied, and a plan that cannot be
staged ahead meets its error in `apply_edits` as it would alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import ToolInputError
from orchestrator.tools import applying
from orchestrator.tools.base import FileEdit
from orchestrator.tools.durable import deferred_durability, make_durable
from orchestrator.tools.files import apply_edits


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def repo(root: Path, n: int) -> tuple[Path, list[FileEdit]]:
    root.mkdir(parents=True)
    (root / "a.py").write_bytes(b"old %d\n" % n)
    return root, [
        FileEdit("a.py", b"old %d\n" % n, b"new %d\n" % n),
        FileEdit("pkg/new.py", None, b"made %d\n" % n),
    ]


@pytest.mark.skipif(applying.SYNCFS is None, reason="no syncfs: nothing is staged ahead")
def test_staged_ahead_then_renamed_is_what_applying_alone_makes(tmp_path: Path) -> None:
    plans = [repo(tmp_path / f"r{n}", n) for n in range(3)]
    alone = [repo(tmp_path / f"alone{n}", n) for n in range(3)]
    for ws, edits in alone:
        apply_edits(ws, edits)
    with deferred_durability() as pending, applying.prestaged(plans):
        # Staged: the temp files are there, no target changed yet.
        assert (tmp_path / "r0" / "a.py").read_bytes() == b"old 0\n"
        assert any(p.name.endswith(".tmp") for p in (tmp_path / "r0").iterdir())
        for ws, edits in plans[:2]:
            apply_edits(ws, edits)
    make_durable(pending)
    for n in range(2):
        assert tree(tmp_path / f"r{n}") == tree(tmp_path / f"alone{n}")
    # The third was never applied: as it was, no temp file and no folder left.
    assert tree(tmp_path / "r2") == {"a.py": b"old 2\n"}
    assert [p.name for p in (tmp_path / "r2").iterdir()] == ["a.py"]


def test_a_plan_that_cannot_be_staged_ahead_fails_in_apply_as_alone(tmp_path: Path) -> None:
    ws, edits = repo(tmp_path / "r", 0)
    (ws / "a.py").write_bytes(b"changed since planned\n")
    with applying.prestaged([(ws, edits)]):
        with pytest.raises(ToolInputError, match="changed since planned"):
            apply_edits(ws, edits)
    assert tree(ws) == {"a.py": b"changed since planned\n"}


def test_edits_other_than_the_staged_ones_are_applied_alone(tmp_path: Path) -> None:
    ws, edits = repo(tmp_path / "r", 0)
    with applying.prestaged([(ws, edits[:1])]):
        apply_edits(ws, edits)  # not the staged plan: staged and renamed here
    assert tree(ws) == {"a.py": b"new 0\n", "pkg/new.py": b"made 0\n"}
    assert sorted(p.name for p in ws.iterdir()) == ["a.py", "pkg"]

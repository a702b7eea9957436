"""A recorded shell changeset whose kept copy is not on this host (issue 14):
the redelivery finishes it from the log's FileChanged diffs, exactly, or
refuses loudly and writes nothing; it never goes on with the workspace short
of what the log says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from events import payloads as p
from events.projections.session import SessionState
from events.store import open_store
from orchestrator.errors import ToolError, ToolInputError
from orchestrator.sandbox import from_log
from orchestrator.tools import files
from orchestrator.tools.base import FileEdit, Spilled, content_hash
from orchestrator.tools.interface import ToolCall
from orchestrator.tools.kinds.shell import ShellTool
from tests.factories import new

BEFORE = {
    "mod.py": b"def load_user(uid):\n    return {'id': uid}\n" * 40,
    "gone.txt": b"old\n",
    "notes.md": b"no newline at the end",
}
AFTER = {
    "mod.py": b"def fetch_user(uid):\n    return {'id': uid}\n" * 40,
    "gone.txt": None,
    "notes.md": b"no newline at the end, still",
    "new/deep/made.txt": b"made\n",
    "empty.txt": b"",
}


def _workspace(root: Path, content: dict[str, bytes | None]) -> Path:
    for rel, data in content.items():
        if data is not None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    return root


def _recorded(call_id: str, before: dict, after: dict) -> list[p.FileChanged]:
    """What ShellTool.record writes for a changeset taking `before` to `after`."""
    out = []
    for rel in sorted(set(before) | set(after)):
        edit = FileEdit(rel, before.get(rel), after.get(rel))
        out.append(
            p.FileChanged(
                call_id=call_id,
                path=rel,
                before_hash=edit.before_hash,
                after_hash=edit.after_hash,
                diff=files.unified_diff(edit),
            )
        )
    return out


def _tree(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}


def test_the_log_gives_back_every_text_change(tmp_path: Path) -> None:
    ws = _workspace(tmp_path / "ws", BEFORE)
    edits = from_log.plan(ws, _recorded("c1", BEFORE, AFTER), "here")
    files.apply_edits(ws, edits)
    want = _workspace(tmp_path / "want", {k: v for k, v in AFTER.items() if v is not None})
    assert _tree(ws) == _tree(want)
    assert from_log.plan(ws, _recorded("c1", BEFORE, AFTER), "here") == []  # done is done


def test_a_half_applied_changeset_is_finished(tmp_path: Path) -> None:
    half = dict(BEFORE, **{"mod.py": AFTER["mod.py"]})
    ws = _workspace(tmp_path / "ws", half)
    edits = from_log.plan(ws, _recorded("c1", BEFORE, AFTER), "here")
    assert "mod.py" not in {e.path for e in edits}
    files.apply_edits(ws, edits)
    assert (ws / "notes.md").read_bytes() == AFTER["notes.md"]
    assert not (ws / "gone.txt").exists()


def test_a_binary_change_is_refused_naming_the_file_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    before = {"a.txt": b"a\n", "blob.bin": b"\0\1"}
    after = {"a.txt": b"b\n", "blob.bin": b"\0\2"}
    ws = _workspace(tmp_path / "ws", before)
    with pytest.raises(ToolError, match=r"blob\.bin.*ORCH_STATE_DIR"):
        from_log.plan(ws, _recorded("c1", before, after), "/state/kept on h1")
    assert _tree(ws) == before


def test_a_masked_diff_is_refused_rather_than_written_wrong(tmp_path: Path) -> None:
    before = {"conf.py": b"token = 'old'\n"}
    after = {"conf.py": b"token = 's3cr3t-value'\n"}
    ws = _workspace(tmp_path / "ws", before)
    [fc] = _recorded("c1", before, after)
    masked = fc.model_copy(update={"diff": fc.diff.replace("s3cr3t-value", "****")})
    with pytest.raises(ToolError, match="conf.py"):
        from_log.plan(ws, [masked], "here")


def test_a_file_changed_since_is_a_conflict(tmp_path: Path) -> None:
    ws = _workspace(tmp_path / "ws", dict(BEFORE, **{"notes.md": b"edited by hand"}))
    with pytest.raises(ToolInputError, match="notes.md is neither"):
        from_log.plan(ws, _recorded("c1", BEFORE, AFTER), "here")


def test_a_redelivery_without_the_kept_copy_applies_the_log(tmp_path: Path) -> None:
    """The shell tool's commit for a call whose completion is stored, on a
    worker whose state folder holds no kept copy (another host's)."""
    store = open_store(f"sqlite:///{tmp_path / 'events.sqlite'}", upgrade=True)
    sid = "s-1"
    store.append(sid, [new(e, i) for i, e in enumerate(_recorded("c1", BEFORE, AFTER))], 0)
    ws = _workspace(tmp_path / "ws", BEFORE)

    class Settings:
        state = tmp_path / "other-host-state"

    call = ToolCall(
        workspace=ws,
        call_id="c1",
        session=SessionState(session_id=sid),
        policy=None,  # type: ignore[arg-type]  # commit reads no policy
        store=store,
        settings=Settings(),
    )
    ShellTool().commit(call, None)
    want = _workspace(tmp_path / "want", {k: v for k, v in AFTER.items() if v is not None})
    assert _tree(ws) == _tree(want)
    store.close()


def test_a_failed_apply_puts_a_big_file_back_from_its_second_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big file's old side is only a hash: the apply keeps a hard link to
    it, so when a later rename fails the file is whole again, and no second
    name is left behind."""
    ws = _workspace(tmp_path / "ws", {"big.bin": b"x" * 4096, "small.txt": b"a\n"})
    new_big = tmp_path / "new-big"
    new_big.write_bytes(b"y" * 8192)
    big_before = Spilled(4096, content_hash(b"x" * 4096))
    big_after = Spilled(8192, content_hash(new_big.read_bytes()), str(new_big))
    edits = [FileEdit("big.bin", big_before, big_after), FileEdit("small.txt", b"a\n", b"b\n")]
    real = os.replace
    renames: list[str] = []

    def failing_second_rename(src, dst, **kw):  # type: ignore[no-untyped-def]
        if str(src).endswith(".tmp"):
            renames.append(str(src))
            if len(renames) == 2:
                raise OSError(28, "No space left on device")
        return real(src, dst, **kw)

    monkeypatch.setattr(os, "replace", failing_second_rename)
    with pytest.raises(ToolError, match="put back"):
        files.apply_edits(ws, edits)
    monkeypatch.undo()
    assert _tree(ws) == {"big.bin": b"x" * 4096, "small.txt": b"a\n"}


def test_the_log_gives_back_executable_bits_and_refuses_symlinks(tmp_path: Path) -> None:
    """A recorded executable bit (alone, or with new content) is given back;
    a symlink the log records (by its target, as git does) is refused as
    lost, naming it, and nothing is written."""
    before = {"run.sh": b"echo 1\n", "tool.sh": b"echo a\n"}
    ws = _workspace(tmp_path / "ws", before)
    mode_only = FileEdit("run.sh", before["run.sh"], before["run.sh"], False, 0o100644, 0o100755)
    both = FileEdit("tool.sh", before["tool.sh"], b"echo b\n", False, 0o100644, 0o100755)
    recorded = [
        p.FileChanged(
            call_id="c1",
            path=e.path,
            before_hash=e.before_hash,
            after_hash=e.after_hash,
            diff=files.unified_diff(e),
        )
        for e in (mode_only, both)
    ]
    assert "old mode 100644\nnew mode 100755\n" in recorded[0].diff
    store = open_store(f"sqlite:///{tmp_path / 'events.sqlite'}", upgrade=True)
    store.append("s-1", [new(e, i) for i, e in enumerate(recorded)], 0)

    class Settings:
        state = tmp_path / "other-host-state"

    call = ToolCall(
        workspace=ws,
        call_id="c1",
        session=SessionState(session_id="s-1"),
        policy=None,  # type: ignore[arg-type]  # commit reads no policy
        store=store,
        settings=Settings(),
    )
    ShellTool().commit(call, None)
    assert os.access(ws / "run.sh", os.X_OK) and os.access(ws / "tool.sh", os.X_OK)
    assert (ws / "tool.sh").read_bytes() == b"echo b\n"
    assert from_log.plan(ws, recorded, "here") == []  # done is done
    store.close()
    link = FileEdit("link.txt", None, b"run.sh", True, None, 0o120000)
    fc = p.FileChanged(
        call_id="c2",
        path=link.path,
        before_hash=None,
        after_hash=link.after_hash,
        diff=files.unified_diff(link),
    )
    with pytest.raises(ToolError, match=r"link\.txt"):
        from_log.plan(ws, [fc], "here")
    assert not (ws / "link.txt").exists()

"""Paths, writes, patches and applying edits, on real files and with the real
git: nothing reaches outside the workspace, and a failed apply changes nothing."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import ToolInputError
from orchestrator.run.steps import PatchStep, WriteStep
from orchestrator.tools.base import FileEdit
from orchestrator.tools.files import apply_edits, plan_patch, plan_write, unified_diff
from orchestrator.tools.paths import resolve_in_workspace

GIT = shutil.which("git")
requires_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under root: file bytes, or 'dir' / 'link->target'."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            out[rel] = (
                f"link->{os.readlink(p)}"
                if p.is_symlink()
                else "dir"
                if p.is_dir()
                else p.read_bytes()
            )
    return out


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    write(
        root,
        {
            "a.txt": b"".join(b"line %d\n" % i for i in range(1, 21)),
            "src/mod.py": b"def f():\n    return 1\n",
            "noeol.txt": b"first\nlast",
            "crlf.txt": b"one\r\ntwo\r\n",
        },
    )
    return root


# --- paths ---------------------------------------------------------------------------


def test_paths_resolve_inside_the_workspace(ws: Path) -> None:
    assert resolve_in_workspace(ws, "src/../a.txt") == (ws / "a.txt").resolve()
    assert resolve_in_workspace(ws, "./src/mod.py") == (ws / "src/mod.py").resolve()
    assert resolve_in_workspace(ws, "new/file.txt") == (ws / "new/file.txt").resolve()


def test_absolute_paths_are_refused(ws: Path) -> None:
    with pytest.raises(ToolInputError, match=r"path '/etc/passwd' is absolute"):
        resolve_in_workspace(ws, "/etc/passwd")


def test_dot_dot_escapes_are_refused(ws: Path) -> None:
    with pytest.raises(ToolInputError, match=r"path 'src/../../x' climbs out .* with '\.\.'"):
        resolve_in_workspace(ws, "src/../../x")


def test_symlink_escapes_are_refused(ws: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (ws / "out").symlink_to(tmp_path / "outside", target_is_directory=True)
    (ws / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(
        ToolInputError,
        match=r"path 'out/x' goes through the symlink out -> "
        r".*outside, outside the workspace",
    ):
        resolve_in_workspace(ws, "out/x")
    with pytest.raises(ToolInputError, match="symlink passwd -> /etc/passwd, outside"):
        plan_write(ws, WriteStep(path="passwd", content="x"))
    with pytest.raises(ToolInputError, match="outside the workspace"):
        apply_edits(ws, [FileEdit("out/new.txt", None, b"x")])
    assert list((tmp_path / "outside").iterdir()) == []


def test_symlink_loops_are_refused(ws: Path) -> None:
    (ws / "loop").symlink_to("loop")
    with pytest.raises(ToolInputError, match="more than 40 symlinks"):
        resolve_in_workspace(ws, "loop/x")


# --- write ---------------------------------------------------------------------------


def test_write_plans_a_new_file(ws: Path) -> None:
    assert plan_write(ws, WriteStep(path="docs/new.md", content="héllo\n")) == [
        FileEdit("docs/new.md", None, "héllo\n".encode())
    ]


def test_write_overwrites_by_default(ws: Path) -> None:
    assert plan_write(ws, WriteStep(path="./src/mod.py", content="x = 1\n")) == [
        FileEdit("src/mod.py", b"def f():\n    return 1\n", b"x = 1\n")
    ]


def test_write_without_overwrite_refuses_an_existing_file(ws: Path) -> None:
    with pytest.raises(ToolInputError, match=r"src/mod.py already exists .* `overwrite: false`"):
        plan_write(ws, WriteStep(path="src/mod.py", content="x", overwrite=False))


def test_write_of_identical_content_plans_nothing(ws: Path) -> None:
    assert plan_write(ws, WriteStep(path="noeol.txt", content="first\nlast")) == []


def test_write_onto_a_directory_is_refused(ws: Path) -> None:
    with pytest.raises(ToolInputError, match="src is a directory"):
        plan_write(ws, WriteStep(path="src", content="x"))


# --- apply ---------------------------------------------------------------------------


def test_apply_writes_creates_and_deletes_and_counts_bytes(ws: Path) -> None:
    edits = [
        *plan_write(ws, WriteStep(path="src/mod.py", content="x = 2\n")),
        FileEdit("deep/new/dir/f.txt", None, b"new\n"),
        FileEdit("noeol.txt", b"first\nlast", None),
    ]
    assert apply_edits(ws, edits) == len(b"x = 2\n") + len(b"new\n")
    snap = snapshot(ws)
    assert snap["src/mod.py"] == b"x = 2\n"
    assert snap["deep/new/dir/f.txt"] == b"new\n"
    assert "noeol.txt" not in snap
    assert not [k for k in snap if k.endswith(".tmp")]


def test_apply_keeps_the_file_mode(ws: Path) -> None:
    script = ws / "run.sh"
    script.write_bytes(b"#!/bin/sh\necho 1\n")
    script.chmod(0o750)
    apply_edits(ws, [FileEdit("run.sh", b"#!/bin/sh\necho 1\n", b"#!/bin/sh\necho 2\n")])
    assert stat.S_IMODE(script.stat().st_mode) == 0o750
    assert script.read_bytes() == b"#!/bin/sh\necho 2\n"


def test_apply_writes_through_a_symlink_inside_the_workspace(ws: Path) -> None:
    (ws / "alias.py").symlink_to("src/mod.py")
    apply_edits(ws, plan_write(ws, WriteStep(path="alias.py", content="y = 3\n")))
    assert (ws / "alias.py").is_symlink()
    assert (ws / "src/mod.py").read_bytes() == b"y = 3\n"


def test_apply_refuses_files_changed_since_planned_and_writes_nothing(ws: Path) -> None:
    edits = [
        *plan_write(ws, WriteStep(path="a.txt", content="A\n")),
        *plan_write(ws, WriteStep(path="src/mod.py", content="B\n")),
    ]
    (ws / "src/mod.py").write_bytes(b"someone else\n")
    before = snapshot(ws)
    with pytest.raises(ToolInputError, match=r"src/mod.py changed since planned"):
        apply_edits(ws, edits)
    assert snapshot(ws) == before


def test_apply_refuses_a_created_file_that_appeared_meanwhile(ws: Path) -> None:
    edits = plan_write(ws, WriteStep(path="late.txt", content="mine\n"))
    (ws / "late.txt").write_bytes(b"theirs\n")
    with pytest.raises(ToolInputError, match="late.txt changed since planned .* found sha256"):
        apply_edits(ws, edits)
    assert (ws / "late.txt").read_bytes() == b"theirs\n"


def test_apply_is_all_or_nothing_when_one_target_cannot_be_written(ws: Path) -> None:
    edits = [
        FileEdit("a.txt", (ws / "a.txt").read_bytes(), b"changed\n"),
        FileEdit("brand/new/file.txt", None, b"new\n"),
        FileEdit("noeol.txt", b"first\nlast", None),
        FileEdit("src/mod.py/child.txt", None, b"parent is a regular file\n"),
    ]
    before = snapshot(ws)
    with pytest.raises(
        ToolInputError, match=r"cannot use .src/mod.py/child.txt.: src/mod.py is a file"
    ):
        apply_edits(ws, edits)
    assert snapshot(ws) == before  # no content, no temp file, no new directory


def test_apply_with_no_edits_does_nothing(ws: Path) -> None:
    before = snapshot(ws)
    assert apply_edits(ws, []) == 0
    assert snapshot(ws) == before


def test_apply_refuses_two_edits_of_one_file(ws: Path) -> None:
    data = (ws / "a.txt").read_bytes()
    with pytest.raises(ToolInputError, match="name the same file"):
        apply_edits(ws, [FileEdit("a.txt", data, b"1"), FileEdit("./a.txt", data, b"2")])


# --- patch in ------------------------------------------------------------------------


def patch(ws: Path, diff: str) -> dict[str, bytes | None]:
    return {e.path: e.after for e in plan_patch(ws, PatchStep(diff=diff))}


def test_patch_applies_git_diff_with_several_files_and_hunks(ws: Path) -> None:
    diff = """\
diff --git a/a.txt b/a.txt
index 1111111..2222222 100644
--- a/a.txt
+++ b/a.txt
@@ -1,4 +1,4 @@
 line 1
-line 2
+LINE 2
 line 3
 line 4
@@ -15,3 +15,4 @@
 line 15
 line 16
+inserted
 line 17
diff --git a/src/mod.py b/src/mod.py
--- a/src/mod.py
+++ b/src/mod.py
@@ -1,2 +1,2 @@
 def f():
-    return 1
+    return 2
"""
    result = patch(ws, diff)
    expected = (
        (ws / "a.txt")
        .read_bytes()
        .replace(b"line 2\n", b"LINE 2\n")
        .replace(b"line 16\n", b"line 16\ninserted\n")
    )
    assert result == {"a.txt": expected, "src/mod.py": b"def f():\n    return 2\n"}
    assert (ws / "src/mod.py").read_bytes() == b"def f():\n    return 1\n"  # nothing written


def test_patch_finds_hunks_at_an_offset(ws: Path) -> None:
    diff = "--- a/a.txt\n+++ b/a.txt\n@@ -3,3 +3,3 @@\n line 10\n-line 11\n+eleven\n line 12\n"
    assert patch(ws, diff)["a.txt"].count(b"eleven\n") == 1  # type: ignore[union-attr]


def test_patch_that_does_not_apply_names_file_and_hunk(ws: Path) -> None:
    diff = "--- a/a.txt\n+++ b/a.txt\n@@ -2,3 +2,3 @@\n line 2\n-line 3 changed\n+x\n line 4\n"
    with pytest.raises(
        ToolInputError,
        match=r"patch does not apply to a.txt: hunk 1 of 1 "
        r"\(@@ -2,3 \+2,3 @@\).*expects 'line 3 changed\\n' "
        r"but the file has 'line 3\\n'",
    ):
        plan_patch(ws, PatchStep(diff=diff))


def test_patch_context_must_match_exactly_without_fuzz(ws: Path) -> None:
    diff = "--- a/a.txt\n+++ b/a.txt\n@@ -1,3 +1,3 @@\n line 1\n-line 2\n+x\n line three\n"
    with pytest.raises(ToolInputError, match="does not apply"):
        plan_patch(ws, PatchStep(diff=diff))


def test_patch_creates_and_deletes_files(ws: Path) -> None:
    diff = """\
diff --git a/new/file.txt b/new/file.txt
new file mode 100644
--- /dev/null
+++ b/new/file.txt
@@ -0,0 +1,2 @@
+hello
+world
diff --git a/src/mod.py b/src/mod.py
deleted file mode 100644
--- a/src/mod.py
+++ /dev/null
@@ -1,2 +0,0 @@
-def f():
-    return 1
"""
    assert patch(ws, diff) == {"new/file.txt": b"hello\nworld\n", "src/mod.py": None}


def test_patch_handles_missing_newline_at_end_of_file(ws: Path) -> None:
    diff = (
        "--- a/noeol.txt\n+++ b/noeol.txt\n@@ -1,2 +1,3 @@\n first\n-last\n"
        "\\ No newline at end of file\n+last\n+more\n\\ No newline at end of file\n"
    )
    assert patch(ws, diff) == {"noeol.txt": b"first\nlast\nmore"}


def test_patch_keeps_crlf_line_endings(ws: Path) -> None:
    diff = "--- a/crlf.txt\n+++ b/crlf.txt\n@@ -1,2 +1,2 @@\n one\r\n-two\r\n+TWO\r\n"
    assert patch(ws, diff) == {"crlf.txt": b"one\r\nTWO\r\n"}


def test_patch_accepts_plain_diff_headers_with_timestamps(ws: Path) -> None:
    diff = (
        "--- src/mod.py\t2024-01-01 00:00:00.000000000 +0000\n"
        "+++ src/mod.py\t2024-01-02 00:00:00.000000000 +0000\n"
        "@@ -2 +2 @@\n-    return 1\n+    return 3\n"
    )
    assert patch(ws, diff) == {"src/mod.py": b"def f():\n    return 3\n"}


def test_patch_renames_a_file(ws: Path) -> None:
    diff = (
        "diff --git a/src/mod.py b/src/renamed.py\nsimilarity index 60%\n"
        "rename from src/mod.py\nrename to src/renamed.py\n--- a/src/mod.py\n"
        "+++ b/src/renamed.py\n@@ -1,2 +1,2 @@\n def f():\n-    return 1\n+    return 4\n"
    )
    assert patch(ws, diff) == {"src/mod.py": None, "src/renamed.py": b"def f():\n    return 4\n"}


@pytest.mark.parametrize(
    ("diff", "problem"),
    [
        (
            "--- a/missing.txt\n+++ b/missing.txt\n@@ -1 +1 @@\n-a\n+b\n",
            "missing.txt, which does not exist",
        ),
        ("--- /dev/null\n+++ b/a.txt\n@@ -0,0 +1 @@\n+x\n", "creates a.txt, which already exists"),
        ("diff --git a/x.png b/x.png\nBinary files a/x.png and b/x.png differ\n", "binary"),
        ("just some words\n", "no file diffs"),
        ("--- a/a.txt\n+++ b/a.txt\n@@ -1,3 +1,3 @@\n line 1\n-line 2\n", "ends early"),
        ("--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-line 1\n+one\n+two\n", "more lines than"),
        ("@@ -1 +1 @@\n-a\n+b\n", "before any file header"),
        ("--- a/../etc/passwd\n+++ b/../etc/passwd\n@@ -1 +1 @@\n-a\n+b\n", "climbs out"),
        ("--- a/a.txt\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-line 1\n-line 2\n", "does not remove"),
    ],
)
def test_bad_patches_are_input_errors(ws: Path, diff: str, problem: str) -> None:
    with pytest.raises(ToolInputError, match=problem):
        plan_patch(ws, PatchStep(diff=diff))


# --- unified diff out ----------------------------------------------------------------


def test_unified_diff_is_git_style(ws: Path) -> None:
    edit = FileEdit("noeol.txt", b"first\nlast", b"first\nLAST\n")
    assert unified_diff(edit) == (
        "diff --git a/noeol.txt b/noeol.txt\n--- a/noeol.txt\n+++ b/noeol.txt\n"
        "@@ -1,2 +1,2 @@\n first\n-last\n\\ No newline at end of file\n+LAST\n"
    )
    assert unified_diff(FileEdit("n.txt", None, b"x\n")) == (
        "diff --git a/n.txt b/n.txt\nnew file mode 100644\n--- /dev/null\n+++ b/n.txt\n"
        "@@ -0,0 +1 @@\n+x\n"
    )
    assert unified_diff(FileEdit("n.txt", b"same", b"same")) == ""


def test_unified_diff_of_binary_content_says_so() -> None:
    assert unified_diff(FileEdit("img.png", b"\x89PNG\x00", b"\x89PNG\x00\x01")) == (
        "diff --git a/img.png b/img.png\nBinary files a/img.png and b/img.png differ\n"
    )
    assert unified_diff(FileEdit("x.bin", None, b"\xff\xfe")).endswith(
        "Binary files /dev/null and b/x.bin differ\n"
    )


def roundtrip_edits(root: Path) -> list[FileEdit]:
    rb = lambda rel: (root / rel).read_bytes()  # noqa: E731
    a = rb("a.txt")
    return [
        FileEdit("a.txt", a, a.replace(b"line 2\n", b"two\n").replace(b"line 19\n", b"") + b"tail"),
        FileEdit("noeol.txt", rb("noeol.txt"), b"first\nlast\n"),
        FileEdit("crlf.txt", rb("crlf.txt"), b"one\r\n2\r\n"),
        FileEdit("src/mod.py", rb("src/mod.py"), None),
        FileEdit("new dir/ünï “q”.txt", None, b"created\n"),
        FileEdit("empty.txt", None, b""),
        FileEdit('we"ird\\name.txt', None, b"quoted\n"),
    ]


def git(root: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    return subprocess.run(
        [GIT or "git", *args],
        cwd=root,
        input=stdin,
        text=True,
        capture_output=True,
        env=env,
        check=True,
    )


@requires_git
def test_diffs_of_edits_reproduce_the_edits_with_git_apply_and_plan_patch(
    ws: Path, tmp_path: Path
) -> None:
    edits = roundtrip_edits(ws)
    diff = "".join(unified_diff(e) for e in edits)
    expected = {e.path: e.after for e in edits}
    assert patch(ws, diff) == expected

    repo = tmp_path / "repo"
    shutil.copytree(ws, repo)
    git(repo, "init", "-q")
    git(repo, "apply", "--whitespace=nowarn", "-", stdin=diff)
    for rel, after in expected.items():
        assert ((repo / rel).read_bytes() if (repo / rel).exists() else None) == after, rel

    apply_edits(ws, plan_patch(ws, PatchStep(diff=diff)))
    assert snapshot(ws) == {k: v for k, v in snapshot(repo).items() if not k.startswith(".git")}


_LINES = st.lists(
    st.sampled_from(
        [
            "a\n",
            "b\n",
            "c\n",
            "a",
            "b",
            "\r\n",
            "x\r\n",
            "é\n",
            "\n",
            " \n",
            "-a\n",
            "+b\n",
            "\\ x\n",
            "@@ -1 +1 @@\n",
        ]
    ),
    max_size=14,
)


def _content(lines: list[str]) -> bytes:
    # only the last line may lack its newline
    fixed = [ln if ln.endswith("\n") else ln + "\n" for ln in lines[:-1]] + lines[-1:]
    return "".join(fixed).encode()


@requires_git
@settings(max_examples=60, deadline=None)
@given(before=_LINES, after=_LINES, exists=st.booleans(), kept=st.booleans())
def test_any_text_edit_round_trips_through_its_diff(
    before: list[str], after: list[str], exists: bool, kept: bool
) -> None:
    edit = FileEdit(
        "f.txt",
        _content(before) if exists else None,
        _content(after) if kept or not exists else None,
    )
    diff = unified_diff(edit)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if edit.before is not None:
            (root / "f.txt").write_bytes(edit.before)
        if not diff:
            return
        assert {e.path: e.after for e in plan_patch(root, PatchStep(diff=diff))} == (
            {} if edit.before == edit.after else {"f.txt": edit.after}
        )
        git(root, "init", "-q")
        git(root, "apply", "--whitespace=nowarn", "-", stdin=diff)
        path = root / "f.txt"
        assert (path.read_bytes() if path.exists() else None) == edit.after


def test_edits_under_deferred_durability_name_their_workspace(tmp_path: Path):
    from orchestrator.tools import durable

    ws = tmp_path / "ws"
    (ws / "pkg").mkdir(parents=True)
    (ws / "pkg" / "a.py").write_text("x = 1\n")
    edits = plan_write(ws, WriteStep(path="pkg/a.py", content="x = 2\n"))
    with durable.deferred_durability() as pending:
        apply_edits(ws, edits)
        apply_edits(ws, [])  # nothing changed: nothing to make durable
    if durable.SYNCFS is not None:
        assert pending == {ws.resolve()}
    durable.make_durable(pending)
    assert (ws / "pkg" / "a.py").read_text() == "x = 2\n"
    assert not [p.name for p in (ws / "pkg").iterdir() if p.name.endswith(".tmp")]
    # Outside the context the renames are durable when apply_edits returns.
    apply_edits(ws, plan_write(ws, WriteStep(path="pkg/a.py", content="x = 3\n")))
    assert (ws / "pkg" / "a.py").read_text() == "x = 3\n"


def test_diff_lines_end_only_at_newlines_whatever_else_the_text_holds() -> None:
    """`diffs._text` takes `str.splitlines` where it agrees with git (lines end
    at \\n only) and splits by hand where the text holds \\r, \\v, \\x85 or
    U+2028, which `splitlines` would also end a line at."""
    from orchestrator.tools.diffs import _text

    def by_hand(text: str) -> list[str]:
        parts = text.split("\n")
        return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])

    for text in [
        "",
        "a",
        "a\n",
        "\n\n",
        "a\nb",
        "a\r\nb\r\n",
        "a\rb\n",
        "x\x0by\x0cz\n",
        "é\x85f\u2028g\n",
        "\x1c\x1d\x1e\n",
        "tail\r",
    ]:
        assert _text(text.encode()) == by_hand(text), repr(text)


@given(pairs=st.lists(st.tuples(st.sampled_from(["a\n", "b\n", "c"]), st.booleans()), max_size=30))
def test_paired_opcodes_are_maximal_runs_of_equal_and_changed_line_pairs(
    pairs: list[tuple[str, bool]],
) -> None:
    """A replace that keeps the line count pairs line i with line i: the
    opcodes cover every pair once, in order, in maximal runs of one kind."""
    from orchestrator.tools.diffs import _paired_opcodes

    before = [line for line, _ in pairs]
    after = [line if same else line + "x" for line, same in pairs]
    ops = _paired_opcodes(before, after)
    flags = [tag == "equal" for tag, lo, hi, _, _ in ops for _ in range(lo, hi)]
    assert flags == [same for _, same in pairs]
    assert all(a[2] == b[1] and a[0] != b[0] for a, b in zip(ops, ops[1:]))
    assert all(lo < hi and (lo, hi) == (j1, j2) for _, lo, hi, j1, j2 in ops)

"""The walker against ripgrep itself: on generated workspaces with generated
ignore files, `iter_files` lists exactly what `rg --files` lists, with and
without `--hidden` and `--no-ignore`; and the tools built on it leave an
ignored `.venv/` alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.run.steps import ListStep, ReplaceStep, SearchStep
from orchestrator.tools.files import list_files
from orchestrator.tools.paths import iter_files
from orchestrator.tools.replace import plan_replace
from orchestrator.tools.search import search

RG = shutil.which("rg")
requires_rg = pytest.mark.skipif(RG is None, reason="ripgrep is not installed")
VARIANTS = [(False, False), (True, False), (False, True), (True, True)]


def rg_files(ws: Path, hidden: bool, no_ignore: bool) -> list[str]:
    """What ripgrep lists: the walk our walker promises (no parent or global
    ignore files, `.git` never listed)."""
    argv = [RG or "rg", "--files", "--no-config", "--no-ignore-parent", "--no-ignore-global"]
    argv += ["--glob", "!.git"]
    argv += ["--hidden"] if hidden else []
    argv += ["--no-ignore"] if no_ignore else []
    out = subprocess.run(argv, cwd=ws, capture_output=True, check=False, env={"HOME": str(ws)})
    assert out.returncode in (0, 1), out.stderr
    return sorted(out.stdout.decode().splitlines())


def assert_same_as_rg(ws: Path) -> None:
    for hidden, no_ignore in VARIANTS:
        ours = iter_files(ws, (), show_hidden=hidden, no_ignore=no_ignore)
        assert ours == rg_files(ws, hidden, no_ignore), (hidden, no_ignore)


def build(ws: Path, files: dict[str, str]) -> Path:
    ws.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return ws


# --- generated workspaces ------------------------------------------------------------

_FILES = ["f", "g.py", "h.log", "x.py", "y.log", "keep", ".h", "build.txt"]
_DIRS = ["", "a/", "b/", "a/b/", "build/", ".hid/", "a/.hid/", "node_modules/", ".venv/"]
_PATTERNS = [
    "a",
    "b",
    "build",
    "build/",
    "/build",
    "/a/b",
    "a/b/",
    "*.log",
    "*.py",
    "x.*",
    "**/b",
    "a/**",
    "a/**/x.py",
    "**/keep",
    ".hid",
    ".hid/",
    "node_modules/",
    ".venv",
    "*",
    "?.py",
    "[xy].*",
    "# a comment",
    "",
    "keep/",
    "/x.py",
    "b/*",
    "a/**/",
    "**/",
    "*/",
    "/*",
    "a/*/b",
    "keep   ",
    "\\#x",
    "x.py\\ ",
    "!",
]
_LINES = st.builds(
    lambda neg, pat: ("!" if neg and pat and not pat.startswith("#") else "") + pat,
    st.booleans(),
    st.sampled_from(_PATTERNS),
)


@st.composite
def workspaces(draw: st.DrawFn) -> dict[str, str]:
    files = {
        d + n: "x"
        for d in draw(st.lists(st.sampled_from(_DIRS), min_size=1, max_size=6, unique=True))
        for n in draw(st.lists(st.sampled_from(_FILES), min_size=1, max_size=3))
    }
    for d in draw(st.lists(st.sampled_from(_DIRS), max_size=4, unique=True)):
        kind = draw(st.sampled_from([".gitignore", ".gitignore", ".ignore", ".rgignore"]))
        files[d + kind] = "\n".join(draw(st.lists(_LINES, min_size=1, max_size=5))) + "\n"
    return files


@requires_rg
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=workspaces(), repo=st.sampled_from(["none", "root", "nested"]), exclude=_LINES)
def test_the_walker_lists_what_ripgrep_lists(
    files: dict[str, str], repo: str, exclude: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = build(Path(tmp) / "ws", files)
        if repo != "none":
            git = ws / ("a/" if repo == "nested" else "") / ".git"
            (git / "info").mkdir(parents=True)
            (git / "info" / "exclude").write_text(exclude + "\n")
            (git / "HEAD").write_text("ref: refs/heads/main\n")
        assert_same_as_rg(ws)


# --- cases by hand -------------------------------------------------------------------

REPO = {
    ".git/HEAD": "ref: refs/heads/main\n",
    ".git/info/exclude": "secret.txt\n",
    ".gitignore": ".venv/\nbuild/\n*.log\n!keep.log\n/top.txt\ndocs/**/gen/\n",
    ".venv/lib/site.py": "fetch_user = 1\n",
    ".github/workflow.yml": "fetch_user\n",
    ".ignore": "!.github/\n",
    "node_modules/pkg/index.js": "fetch_user\n",
    "build/out.py": "fetch_user\n",
    "src/app.py": "def fetch_user(): pass\n",
    "src/.gitignore": "!*.log\ngenerated.py\n",
    "src/debug.log": "fetch_user\n",
    "src/generated.py": "fetch_user\n",
    "src/sub/top.txt": "fetch_user\n",
    "top.txt": "fetch_user\n",
    "keep.log": "fetch_user\n",
    "drop.log": "fetch_user\n",
    "secret.txt": "fetch_user\n",
    "docs/a/gen/x.md": "fetch_user\n",
    "docs/a/gen.md": "fetch_user\n",
    "vendor/.rgignore": "*\n!/kept.py\n",
    "vendor/kept.py": "fetch_user\n",
    "vendor/dropped.py": "fetch_user\n",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return build(tmp_path / "ws", REPO)


def test_a_git_workspace_skips_what_its_ignore_files_and_hidden_names_hide(repo: Path) -> None:
    assert iter_files(repo) == [
        ".github/workflow.yml",  # hidden, but re-included by .ignore
        "docs/a/gen.md",
        "keep.log",
        "node_modules/pkg/index.js",  # not ignored here, so walked
        "src/app.py",
        "src/debug.log",  # the nested .gitignore re-includes it
        "src/sub/top.txt",  # /top.txt is anchored at the root
        "vendor/kept.py",
    ]


def test_hidden_and_no_ignore_widen_the_walk_as_rg_flags_do(repo: Path) -> None:
    every = iter_files(repo, show_hidden=True, no_ignore=True)
    assert ".venv/lib/site.py" in every and "build/out.py" in every and ".gitignore" in every
    assert not any(f.startswith(".git/") for f in every)
    assert ".venv/lib/site.py" not in iter_files(repo, show_hidden=True)
    assert "build/out.py" in iter_files(repo, no_ignore=True)


@requires_rg
def test_the_hand_written_repository_matches_ripgrep(repo: Path) -> None:
    assert_same_as_rg(repo)


@requires_rg
def test_a_workspace_that_is_no_repository_honours_only_ignore_and_rgignore(
    tmp_path: Path,
) -> None:
    ws = build(tmp_path / "ws", {k: v for k, v in REPO.items() if not k.startswith(".git/")})
    files = iter_files(ws)
    assert "build/out.py" in files and "drop.log" in files  # .gitignore does not count
    assert "vendor/dropped.py" not in files and ".github/workflow.yml" in files
    assert_same_as_rg(ws)


@requires_rg
def test_a_repository_above_the_workspace_makes_its_gitignore_files_count(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    ws = build(tmp_path / "pkg", {".gitignore": "out/\n", "out/x.py": "", "src/y.py": ""})
    assert iter_files(ws) == ["src/y.py"]
    assert_same_as_rg(ws)


@requires_rg
def test_a_worktree_reads_the_exclude_file_of_its_common_git_dir(tmp_path: Path) -> None:
    common = tmp_path / "main.git"
    (common / "worktrees" / "wt").mkdir(parents=True)
    (common / "info").mkdir()
    (common / "info" / "exclude").write_text("local.cfg\n")
    (common / "worktrees" / "wt" / "commondir").write_text("../..\n")
    ws = build(tmp_path / "wt", {"local.cfg": "", "app.py": ""})
    (ws / ".git").write_text(f"gitdir: {common / 'worktrees' / 'wt'}\n")
    assert iter_files(ws) == ["app.py"]
    assert_same_as_rg(ws)


def test_symlinks_are_neither_listed_nor_followed(tmp_path: Path) -> None:
    ws = build(tmp_path / "ws", {"src/a.py": "", "real/b.py": ""})
    (ws / "alias.py").symlink_to("src/a.py")
    (ws / "linked").symlink_to("real", target_is_directory=True)
    os.mkfifo(ws / "fifo")
    assert iter_files(ws) == ["real/b.py", "src/a.py"]


def test_a_symlinked_ignore_file_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("*.py\n")
    ws = build(tmp_path / "ws", {"a.py": ""})
    (ws / ".ignore").symlink_to(tmp_path / "elsewhere")
    assert iter_files(ws) == ["a.py"]


# --- the tools on top of the walk ----------------------------------------------------


def test_replace_leaves_an_ignored_venv_untouched(repo: Path) -> None:
    edits, count = plan_replace(repo, ReplaceStep(pattern="fetch_user", replacement="load_user"))
    changed = sorted(e.path for e in edits)
    assert ".venv/lib/site.py" not in changed and "build/out.py" not in changed
    assert "src/app.py" in changed and count == len(changed)
    widened = plan_replace(
        repo, ReplaceStep(pattern="fetch_user", replacement="x", hidden=True, no_ignore=True)
    )[0]
    assert ".venv/lib/site.py" in {e.path for e in widened}


@pytest.mark.parametrize("use_rg", [False, pytest.param(True, marks=requires_rg)])
def test_search_skips_ignored_files_on_both_backends(repo: Path, use_rg: bool) -> None:
    out = search(repo, SearchStep(pattern="fetch_user"), use_rg=use_rg).output
    assert ".venv/" not in out and "build/" not in out and "src/app.py:1:" in out
    wide = search(repo, SearchStep(pattern="fetch_user", no_ignore=True), use_rg=use_rg).output
    assert "build/out.py:1:" in wide and ".venv/" not in wide  # still hidden


def test_list_applies_the_workspace_rules_in_a_subfolder_and_lists_a_named_ignored_one(
    repo: Path,
) -> None:
    step = ListStep(path="src")
    listed = list_files(repo, step.path, step.glob, step.max_output_bytes).output
    assert listed == "src/app.py\nsrc/debug.log\nsrc/sub/top.txt\n"
    venv = list_files(repo, ".venv", (), 1 << 16).output
    assert venv == ".venv/lib/site.py\n"

"""The search tool on real files, with the real ripgrep: both backends must
give the same ToolResult, and the file list must stay inside the workspace."""

from __future__ import annotations

import dataclasses
import re
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.errors import CountMismatch, ToolInputError
from orchestrator.run.steps import SearchStep
from orchestrator.tools.base import ToolResult
from orchestrator.tools.paths import iter_files
from orchestrator.tools.search import FOLDS_TO_ASCII, ripgrep, search

requires_rg = pytest.mark.skipif(ripgrep() is None, reason="no ripgrep with PCRE2 installed")


def make_corpus(root: Path) -> Path:
    files: dict[str, bytes] = {
        "README.md": b"# Fetch users\nCall fetch_user(id) to get one.\n",
        "src/app.py": b"import os\n\ndef fetch_user(uid):\n"
        b"    return db.get(uid)  # $1.50 (a+b)*\n",
        "src/deep/er/mod.py": b"from app import fetch_user\nFETCH_USER = fetch_user\n",
        "src/crlf.py": b"def fetch_user():\r\n    pass\r\n\r\nend = 1\r\n",
        "unicode.txt": "Straße ſ K İ ı é\nnaïve café — “quotes”\nΣίσυφος ΣΊΣΥΦΟΣ\n"
        "tab\there\x1cfs\n".encode(),
        "binary.bin": b"fetch_user\x00\x01\x02fetch_user\n",
        "late-nul.txt": b"fetch_user is here\n" * 50 + b"\x00",
        "empty.txt": b"",
        "no-newline.txt": b"last line fetch_user",
        "lone-cr.txt": b"a\rb fetch_user\rc\n",
        "bom.txt": b"\xef\xbb\xbffetch_user after a BOM\n",
        "latin1.txt": b"caf\xe9 fetch_user\n\xff\xfe broken\n",
        "dash-file.txt": b"-e fetch_user in a file named like a flag\n",
        "sp ace/name with spaces.txt": b"fetch_user\n",
        ".hidden/h.py": b"fetch_user hidden: searched with hidden: true only\n",
        ".git/config": b"fetch_user must never be listed\n",
        "regex.txt": b"a.b a+b (x) [y] {z} ^start end$ back\\slash\n",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "-flaglike.py").write_bytes(b"fetch_user\n")
    (root / "link-inside.py").symlink_to("src/app.py")
    return root


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    ws = make_corpus(tmp_path / "ws")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_bytes(b"fetch_user secret\n")
    (ws / "escape.py").symlink_to(outside / "secret.py")
    (ws / "linked-dir").symlink_to(outside, target_is_directory=True)
    return ws


def both(ws: Path, step: SearchStep) -> ToolResult:
    """Run both backends, assert they agree, return the result."""
    py = search(ws, step, use_rg=False)
    if ripgrep():
        rg = search(ws, step, use_rg=True)
        assert dataclasses.replace(rg, duration_s=0) == dataclasses.replace(py, duration_s=0)
    return py


STEPS = [
    SearchStep(pattern="fetch_user"),
    SearchStep(pattern="FETCH_user", ignore_case=True),
    SearchStep(pattern="fetch_user()", literal=True),
    SearchStep(pattern="$1.50 (a+b)*", literal=True),
    SearchStep(pattern="a.b a+b (x) [y] {z}", literal=True),
    SearchStep(pattern="back\\slash", literal=True),
    SearchStep(pattern=r"\bfetch_\w+\("),
    SearchStep(pattern=r"^def "),
    SearchStep(pattern=r"\d+$"),
    SearchStep(pattern=r"pass\r$"),
    SearchStep(pattern=r"^$"),
    SearchStep(pattern=r"\s\S"),
    SearchStep(pattern=r"[^\x00-\x7f]+"),
    SearchStep(pattern="straße", ignore_case=True),
    SearchStep(pattern="STRASSE", ignore_case=True),
    SearchStep(pattern="i", ignore_case=True, glob=("unicode.txt",)),
    SearchStep(pattern="[a-z]", ignore_case=True, glob=("unicode.txt",)),
    SearchStep(pattern="[^a-z ]", ignore_case=True, glob=("unicode.txt",)),
    SearchStep(pattern="σίσυφος", ignore_case=True),
    SearchStep(pattern=r"\N{EM DASH}"),
    SearchStep(pattern=r"(?a)caf\w"),
    SearchStep(pattern=r"\w{,2}é"),
    SearchStep(pattern=r"(?<=caf)é|(?<!x)fs"),
    SearchStep(pattern=r"(?P<q>[“”]).*(?P=q)"),
    SearchStep(pattern=r"(fetch)?(?(1)_user|ïve)"),
    SearchStep(pattern=r"(?i)(ss)\1|(?>fetch)_(?=user)"),
    SearchStep(pattern=r"a\rb"),
    SearchStep(pattern=r"\x1c"),
    SearchStep(pattern="\ufffd"),
    SearchStep(pattern="\ufeff"),
    SearchStep(pattern="fetch_user", glob=("*.py",)),
    SearchStep(pattern="fetch_user", glob=("src/**",)),
    SearchStep(pattern="fetch_user", glob=("**/*.txt", "!no-*")),
    SearchStep(pattern="nothing matches this"),
]


@requires_rg
@pytest.mark.parametrize("step", STEPS, ids=[s.pattern for s in STEPS])
def test_ripgrep_and_python_backends_return_the_same_result(corpus: Path, step: SearchStep) -> None:
    both(corpus, step)


def test_search_lists_path_line_and_text_sorted_by_path_and_line(corpus: Path) -> None:
    result = both(corpus, SearchStep(pattern="fetch_user", glob=("src/**", "*.md", "bom.txt")))
    assert result.output == (
        "README.md:2:Call fetch_user(id) to get one.\n"
        "bom.txt:1:fetch_user after a BOM\n"
        "src/app.py:3:def fetch_user(uid):\n"
        "src/crlf.py:1:def fetch_user():\n"
        "src/deep/er/mod.py:1:from app import fetch_user\n"
        "src/deep/er/mod.py:2:FETCH_USER = fetch_user\n"
    )
    assert result.count == 6
    assert result.output_bytes == len(result.output.encode())


def test_search_skips_binary_files_on_both_backends(corpus: Path) -> None:
    result = both(corpus, SearchStep(pattern="fetch_user"))
    assert "binary.bin" not in result.output
    assert "late-nul.txt" not in result.output  # a NUL anywhere makes the file binary


def test_search_reads_invalid_utf8_with_replacement_characters(corpus: Path) -> None:
    result = both(corpus, SearchStep(pattern="caf. fetch", glob=("latin1.txt",)))
    assert result.output == "latin1.txt:1:caf\ufffd fetch_user\n"


def test_search_finds_empty_and_unterminated_last_lines_like_ripgrep(corpus: Path) -> None:
    assert both(corpus, SearchStep(pattern="^$", glob=("empty.txt",))).count == 0
    assert both(corpus, SearchStep(pattern="^$", glob=("src/crlf.py",))).count == 0  # "\r"
    result = both(corpus, SearchStep(pattern="line", glob=("no-newline.txt",)))
    assert result.output == "no-newline.txt:1:last line fetch_user\n"


def test_search_never_leaves_the_workspace_or_enters_git(corpus: Path) -> None:
    result = both(corpus, SearchStep(pattern="fetch_user"))
    assert "secret" not in result.output
    assert ".git/" not in result.output
    assert "link-inside.py" not in result.output  # rg follows no symlink either
    assert ".hidden/" not in result.output
    assert ".hidden/h.py:1:" in both(corpus, SearchStep(pattern="fetch_user", hidden=True)).output
    assert "-flaglike.py:1:fetch_user" in result.output
    assert "sp ace/name with spaces.txt:1:fetch_user" in result.output


def test_search_with_no_match_returns_empty_output(corpus: Path) -> None:
    result = both(corpus, SearchStep(pattern="zzz_nowhere"))
    assert dataclasses.replace(result, duration_s=0) == ToolResult(
        output="", output_bytes=0, count=0
    )


@pytest.mark.parametrize("use_rg", [False, pytest.param(True, marks=requires_rg)])
def test_bad_regex_is_an_input_error_naming_the_position(corpus: Path, use_rg: bool) -> None:
    with pytest.raises(
        ToolInputError,
        match=r"'fetch_\(user' is not a valid regular "
        r"expression: missing \), unterminated "
        r"subpattern at position 6",
    ):
        search(corpus, SearchStep(pattern="fetch_(user"), use_rg=use_rg)


def test_a_pattern_that_needs_a_newline_is_refused(corpus: Path) -> None:
    with pytest.raises(ToolInputError, match="within one line"):
        search(corpus, SearchStep(pattern="fetch\nuser", literal=True))
    with pytest.raises(ToolInputError, match="within one line"):
        search(corpus, SearchStep(pattern=r"a\n+b"))
    assert both(corpus, SearchStep(pattern=r"user\n?$", glob=("*.md",))).count == 0


def test_count_outside_expect_raises_count_mismatch_carrying_the_result(corpus: Path) -> None:
    with pytest.raises(CountMismatch, match="found 6 matching lines, expected exactly 2") as info:
        search(
            corpus, SearchStep(pattern="fetch_user", glob=("src/**", "*.md", "bom.txt"), expect=2)
        )
    assert info.value.result.count == 6  # type: ignore[attr-defined]
    assert (
        both(
            corpus, SearchStep(pattern="fetch_user", glob=("src/**",), expect={"min": 1, "max": 4})
        ).count
        == 4
    )


def test_output_is_capped_on_a_character_boundary_with_a_marker(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("ééééé match\n" * 1000, encoding="utf-8")
    result = both(tmp_path, SearchStep(pattern="match", max_output_bytes=101))
    full = "".join(f"big.txt:{n}:ééééé match\n" for n in range(1, 1001)).encode()
    assert result.output_bytes == len(full)
    assert result.count == 1000
    head, marker = result.output.rsplit("\n... [truncated ", 1)
    assert full.startswith(head.encode()) and len(head.encode()) <= 101
    assert marker == f"{len(full) - len(head.encode())} bytes]\n"


@requires_rg
def test_ripgrep_runs_in_batches_over_thousands_of_files(tmp_path: Path) -> None:
    for i in range(5000):
        (tmp_path / f"f{i:05d}-{'x' * 60}.txt").write_bytes(b"hit\n" if i % 7 == 0 else b"no\n")
    result = both(tmp_path, SearchStep(pattern="hit", max_output_bytes=1 << 20))
    assert result.count == len(range(0, 5000, 7))


# --- the file list -------------------------------------------------------------------


def test_file_list_is_sorted_relative_and_skips_git_hidden_and_symlinks(corpus: Path) -> None:
    files = iter_files(corpus, ())
    assert files == sorted(files)
    assert "src/deep/er/mod.py" in files and ".hidden/h.py" not in files
    assert ".hidden/h.py" in iter_files(corpus, (), show_hidden=True)
    assert "link-inside.py" not in files
    assert not any(f.startswith((".git/", "linked-dir")) or f == "escape.py" for f in files)


@pytest.mark.parametrize(
    ("glob", "expected"),
    [
        (
            "*.py",
            [
                "-flaglike.py",
                "src/app.py",
                "src/crlf.py",
                "src/deep/er/mod.py",
            ],
        ),
        ("src/*.py", ["src/app.py", "src/crlf.py"]),
        ("src/**/*.py", ["src/app.py", "src/crlf.py", "src/deep/er/mod.py"]),
        ("src/", ["src/app.py", "src/crlf.py", "src/deep/er/mod.py"]),
        ("*.{md,bin}", ["README.md", "binary.bin"]),
        ("[bl]*.txt", ["bom.txt", "late-nul.txt", "latin1.txt", "lone-cr.txt"]),
        ("/*.md", ["README.md"]),
        ("**/name with spaces.txt", ["sp ace/name with spaces.txt"]),
    ],
)
def test_globs_match_like_ripgrep(corpus: Path, glob: str, expected: list[str]) -> None:
    assert iter_files(corpus, (glob,)) == expected


def test_exclusion_globs_remove_files() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = make_corpus(Path(tmp))
        assert iter_files(ws, ("src/**", "!**/deep/**")) == ["src/app.py", "src/crlf.py"]
        assert "src/app.py" not in iter_files(ws, ("!src/",))


# --- the two backends on generated corpora -------------------------------------------

_ALPHABET = "aAbBiIkKsSß_ 0123456789.-()\t\r\x1cİıſKéÉΣσς\ufffd“"
_ATOMS = [
    "a",
    "b",
    "i",
    "k",
    "s",
    "ß",
    "é",
    "σ",
    "İ",
    ".",
    r"\w",
    r"\W",
    r"\d",
    r"\s",
    r"\S",
    r"\b",
    "^",
    "$",
    "[a-c]",
    "[^a ]",
    r"[\s\d]",
    r"[^\w]",
    "K",
    "(a|b)",
    r"\.",
    r"\r",
    r"(?i:k)",
    r"(?-i:s)",
    r"(?=a)",
    r"(?<!b)",
    r"(?!\s)",
    r"(?<=\d)",
    "(?>a|ab)",
    r"\B",
]
_ZERO_WIDTH = {"^", "$", r"\b", r"\B", r"(?=a)", r"(?<!b)", r"(?!\s)", r"(?<=\d)"}


@st.composite
def regexes(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(_ATOMS), min_size=1, max_size=4))
    quant = draw(
        st.lists(
            st.sampled_from(["", "", "*", "+", "?", "{1,2}", "+?"]),
            min_size=len(parts),
            max_size=len(parts),
        )
    )
    out = ""
    for atom, q in zip(parts, quant):
        out += atom if atom in _ZERO_WIDTH else atom + q
    return out


@requires_rg
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(st.lists(st.text(_ALPHABET, max_size=12), max_size=5), min_size=1, max_size=4),
    pattern=regexes(),
    ignore_case=st.booleans(),
    crlf=st.booleans(),
)
def test_backends_agree_on_generated_files_and_patterns(
    files: list[list[str]], pattern: str, ignore_case: bool, crlf: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        for i, lines in enumerate(files):
            sub = ws / ("d" * (i % 3))
            sub.mkdir(exist_ok=True)
            (sub / f"f{i}.txt").write_bytes(("\r\n" if crlf else "\n").join(lines).encode())
        both(ws, SearchStep(pattern=pattern, ignore_case=ignore_case))


@requires_rg
@settings(max_examples=60, deadline=None)
@given(
    # Control characters are refused in a pattern (strict input, issue 16):
    # tests/security/test_strict_input.py covers that.
    text=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
    ignore_case=st.booleans(),
)
def test_backends_agree_on_literal_searches_for_any_text(text: str, ignore_case: bool) -> None:
    if not text or "\n" in text or "\0" in text:
        return  # a newline is refused; a NUL makes the file binary
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        (ws / "a.txt").write_text(f"x{text}y\n{text.upper()}\n{text.lower()}\n", "utf-8")
        result = both(ws, SearchStep(pattern=text, literal=True, ignore_case=ignore_case))
        assert result.count >= 1


def test_only_four_non_ascii_characters_fold_to_ascii_in_python() -> None:
    """The translation relies on this list; a new Python or Unicode version that
    changes it must fail here, not give different search results."""
    letters = re.compile("[a-z]", re.IGNORECASE)
    found = tuple(
        c
        for c in range(0x80, sys.maxunicode + 1)
        if not 0xD800 <= c <= 0xDFFF and letters.fullmatch(chr(c))
    )
    assert found == FOLDS_TO_ASCII

"""The replace tool's plan on real files: what changes, what is left alone
byte for byte, and what is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import CountMismatch, ToolInputError
from orchestrator.run.steps import ReplaceStep
from orchestrator.tools.base import FileEdit
from orchestrator.tools.files import apply_edits
from orchestrator.tools.replace import plan_replace


def write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return write(
        tmp_path,
        {
            "app.py": b"def fetch_user(uid):\n    return fetch_user_raw(uid)\n",
            "pkg/use.py": b"from app import fetch_user\r\nx = fetch_user(1)\r\n",
            "bom.py": b"\xef\xbb\xbffetch_user()",
            "binary.bin": b"fetch_user\x00",
            "latin1.py": b"# caf\xe9\nfetch_user()\n",
            "other.py": b"nothing here\n",
            ".git/HEAD": b"fetch_user\n",
        },
    )


def test_replace_plans_edits_only_for_files_that_change(ws: Path) -> None:
    edits, count = plan_replace(ws, ReplaceStep(pattern=r"\bfetch_user\b", replacement="load_user"))
    assert count == 4
    assert edits == [
        FileEdit(
            "app.py",
            b"def fetch_user(uid):\n    return fetch_user_raw(uid)\n",
            b"def load_user(uid):\n    return fetch_user_raw(uid)\n",
        ),
        FileEdit("bom.py", b"\xef\xbb\xbffetch_user()", b"\xef\xbb\xbfload_user()"),
        FileEdit(
            "pkg/use.py",
            b"from app import fetch_user\r\nx = fetch_user(1)\r\n",
            b"from app import load_user\r\nx = load_user(1)\r\n",
        ),
    ]
    assert snapshot(ws)["app.py"].startswith(b"def fetch_user")  # planning writes nothing


def test_replace_skips_binary_and_non_utf8_files(ws: Path) -> None:
    edits, count = plan_replace(
        ws, ReplaceStep(pattern="fetch_user", replacement="x", literal=True)
    )
    assert {e.path for e in edits} == {"app.py", "pkg/use.py", "bom.py"}
    assert count == 5


def test_regex_replacement_expands_groups(ws: Path) -> None:
    edits, count = plan_replace(
        ws,
        ReplaceStep(
            pattern=r"fetch_(\w+)\((?P<arg>\w*)\)",
            replacement=r"load_\1(\g<arg>, cache=True)",
            glob=("app.py",),
        ),
    )
    assert count == 2
    assert edits[0].after == (
        b"def load_user(uid, cache=True):\n    return load_user_raw(uid, cache=True)\n"
    )


def test_literal_mode_inserts_backslashes_and_group_syntax_as_written(tmp_path: Path) -> None:
    write(tmp_path, {"a.txt": b"price: $1.50 (a+b)*\n"})
    for ignore_case in (False, True):
        edits, count = plan_replace(
            tmp_path,
            ReplaceStep(
                pattern="$1.50 (A+B)*" if ignore_case else "$1.50 (a+b)*",
                replacement=r"\1 \g<0> C:\new",
                literal=True,
                ignore_case=ignore_case,
            ),
        )
        assert count == 1
        assert edits[0].after == b"price: \\1 \\g<0> C:\\new\n"


def test_caret_and_dollar_anchor_at_every_line(tmp_path: Path) -> None:
    write(tmp_path, {"a.py": b"import os\nimport sys\n  import re\n"})
    edits, count = plan_replace(
        tmp_path, ReplaceStep(pattern=r"^import (\w+)$", replacement=r"import \1 as _\1")
    )
    assert count == 2
    assert edits[0].after == b"import os as _os\nimport sys as _sys\n  import re\n"


def test_ignore_case_replaces_every_spelling(tmp_path: Path) -> None:
    write(tmp_path, {"a.py": b"Fetch FETCH fetch"})
    edits, count = plan_replace(
        tmp_path, ReplaceStep(pattern="fetch", replacement="load", ignore_case=True)
    )
    assert (count, edits[0].after) == (3, b"load load load")


def test_globs_limit_the_files_replaced(ws: Path) -> None:
    edits, _ = plan_replace(
        ws, ReplaceStep(pattern="fetch_user", replacement="x", glob=("pkg/**",))
    )
    assert [e.path for e in edits] == ["pkg/use.py"]


def test_no_match_plans_nothing(ws: Path) -> None:
    assert plan_replace(ws, ReplaceStep(pattern="zzz", replacement="y")) == ([], 0)


def test_a_replacement_that_changes_nothing_counts_but_plans_no_edit(tmp_path: Path) -> None:
    write(tmp_path, {"a.py": b"same same\n"})
    assert plan_replace(tmp_path, ReplaceStep(pattern="same", replacement="same")) == ([], 2)


def test_bad_regex_is_an_input_error(ws: Path) -> None:
    with pytest.raises(ToolInputError, match=r"not a valid regular expression: .* at position"):
        plan_replace(ws, ReplaceStep(pattern="fetch_(user", replacement="x"))


@pytest.mark.parametrize(
    ("pattern", "replacement", "problem"),
    [
        ("fetch_(user)", r"\9", "invalid group reference 9"),
        ("fetch_(?P<name>user)", r"\g<nope>", "unknown group name 'nope'"),
        ("fetch", "trailing\\", "bad escape"),
    ],
)
def test_bad_replacement_template_is_an_input_error(
    ws: Path, pattern: str, replacement: str, problem: str
) -> None:
    with pytest.raises(ToolInputError, match=problem):
        plan_replace(ws, ReplaceStep(pattern=pattern, replacement=replacement))


def test_count_mismatch_is_raised_before_anything_is_written(ws: Path) -> None:
    before = snapshot(ws)
    with pytest.raises(CountMismatch, match=r"found 4 occurrences, expected between 1 and 3"):
        plan_replace(
            ws,
            ReplaceStep(
                pattern=r"\bfetch_user\b", replacement="load_user", expect={"min": 1, "max": 3}
            ),
        )
    assert snapshot(ws) == before
    _, count = plan_replace(
        ws, ReplaceStep(pattern=r"\bfetch_user\b", replacement="load_user", expect=4)
    )
    assert count == 4


def test_applied_replacement_changes_only_the_replaced_bytes(ws: Path) -> None:
    before = snapshot(ws)
    edits, _ = plan_replace(
        ws, ReplaceStep(pattern="fetch_user", replacement="load_user", literal=True)
    )
    apply_edits(ws, edits)
    after = snapshot(ws)
    assert {k for k in after if after[k] != before[k]} == {"app.py", "pkg/use.py", "bom.py"}
    for rel in ("app.py", "pkg/use.py", "bom.py"):
        assert after[rel] == before[rel].replace(b"fetch_user", b"load_user")


def test_thousands_of_files_are_planned_in_one_pass(tmp_path: Path) -> None:
    for i in range(3000):
        d = tmp_path / f"pkg{i % 30}"
        d.mkdir(exist_ok=True)
        (d / f"m{i}.py").write_bytes(b"x = fetch_user()\n" if i % 10 == 0 else b"x = 1\n")
    edits, count = plan_replace(
        tmp_path, ReplaceStep(pattern=r"fetch_(\w+)", replacement=r"load_\1")
    )
    assert (len(edits), count) == (300, 300)


def test_the_byte_prefilter_is_text_every_match_contains():
    import re

    from orchestrator.tools.replace import required_literal

    cases = {
        r"\bgetattr\(": b"getattr(",
        r"a+bc": b"bc",
        r"x\d+yz\b": b"yz",
        r"^import os$": b"import os",
        r"é\w": "é".encode(),
        r"foo|bar": None,
        r"(?i)abc": None,
        r"(?i:ab)c": b"c",
        r"[ab]": None,
    }
    texts = ["getattr(x)", "abc abbc", "x12yz", "import os", "éa", "bar", "ABC", "ABc", "b"]
    for pattern, want in cases.items():
        rx = re.compile(pattern, re.MULTILINE)
        assert required_literal(rx) == want, pattern
        for text in texts:  # never rules out a text that matches
            if want is not None and want not in text.encode():
                assert rx.search(text) is None, (pattern, text)
    assert required_literal(re.compile("abc", re.IGNORECASE)) is None


ANCHORED = [
    r"\bgetattr\(",
    r"^import (\w+)$",
    r"\Afoo",
    r"\bab?",
    r"$\nx",
    r"\bfoo(?=bar)",
    r"\Bab",
    r"\b(?P<n>getattr)\(",
]


def test_a_pattern_opening_with_assertions_replaces_as_re_does():
    """The fast path (`_anchored_subn`: matches tried only where the leading
    literal occurs) against `re.subn` itself, on the edges where they could part:
    a match at the start, after a newline, inside a word, back to back, overlapping
    candidates, group references in the template."""

    from orchestrator.tools.replace import compile_replace

    texts = [
        "",
        "getattr(x)",
        "xgetattr(y) getattr(getattr(z))",
        "import os\nimport sys\n  import re\nimport os.path",
        "foo\nfoo foobar",
        "ab a abab aab b_ab",
        "x\n\nx\nx",
        "getattr(getattr(getattr(",
        "é getattr(é) _getattr( 1getattr(",
    ]
    for pattern in ANCHORED:
        for replacement in ["R", r"<\g<0>>", r"[\\]"]:
            step = ReplaceStep(kind="replace", name="r", pattern=pattern, replacement=replacement)
            rx, rewrite = compile_replace(step)
            for text in texts:
                assert rewrite(text) == rx.subn(replacement, text), (pattern, replacement, text)
    step = ReplaceStep(kind="replace", name="r", pattern=r"\b(?P<n>getattr)\(", replacement=r"\1_(")
    assert compile_replace(step)[1]("getattr(a) xgetattr(b)") == ("getattr_(a) xgetattr(b)", 1)


def test_only_a_pattern_that_opens_with_assertions_then_text_takes_the_fast_path():
    import re

    from orchestrator.tools.replace import _leading_literal

    assert _leading_literal(re.compile(r"\bgetattr\(", re.MULTILINE)) == "getattr("
    assert _leading_literal(re.compile(r"^\bab?c", re.MULTILINE)) == "a"
    for pattern in [r"getattr\(", r"\b\w+", r"\b(?i:ab)", r"(?i)\bab", r"\bfoo|bar", r"\b"]:
        assert _leading_literal(re.compile(pattern, re.MULTILINE)) is None, pattern

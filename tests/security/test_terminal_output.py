"""The CLI never prints control characters from recorded text (tool output,
errors, file names, a model's words) raw to a terminal: ESC would start an
escape sequence (cursor moves, a rewritten title, the clipboard), CR would
overwrite what was printed, NUL and the C1 range likewise. They are shown
escaped (`\\x1b`); `--json` keeps the exact text."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.cli.render import printable, shown
from tests.cli_helpers import cli, shape_env

_RAW = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@given(st.text())
def test_printable_leaves_no_control_character_but_newline_and_tab(text: str) -> None:
    out = printable(text)
    assert not _RAW.search(out)
    assert out.count("\n") == text.count("\n") and out.count("\t") == text.count("\t")


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc",))))
def test_printable_leaves_ordinary_text_alone(text: str) -> None:
    assert printable(text) == text


def test_markup_in_recorded_text_is_not_a_style() -> None:
    assert shown("[bold]x\x1b]0;title\x07") == "\\[bold]x\\x1b]0;title\\x07"


def test_fs_read_escapes_a_files_control_characters(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    evil = "ok\x1b[2J\x1b]52;c;ZXZpbA==\x07\rover\x01written\n"
    (ws / "evil.txt").write_text(evil)
    env = shape_env(tmp_path)
    read = cli(env, "fs", "read", "evil.txt", "-w", str(ws))
    assert read.returncode == 0, read.stderr
    assert not _RAW.search(read.stdout + read.stderr)
    assert read.stdout == "ok\\x1b[2J\\x1b]52;c;ZXZpbA==\\x07\\x0dover\\x01written\n"
    exact = cli(env, "fs", "read", "evil.txt", "-w", str(ws), "--json")
    assert json.loads(exact.stdout)["output"] == evil

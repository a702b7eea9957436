"""`--help` that teaches: every command says what it does and every option
what it is for, and the command list reads as sentences, not as the
docstrings' hard line breaks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import click
import typer.main

from orchestrator.cli.main import app
from tests.cli_helpers import ROOT


def commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            yield from commands(sub, (*path, name))


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, cmd in commands(typer.main.get_command(app)):
        if not (cmd.help or "").strip():
            missing.append(" ".join(path) or "orchestrator")
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip():
                missing.append(f"{' '.join(path)} {p.opts[0]}")
    assert missing == [], "add help= to: " + ", ".join(missing)


def test_the_command_list_wraps_sentences_at_the_terminal_width() -> None:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb"}
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    run_line = next(line for line in out.splitlines() if line.lstrip("│ ").startswith("run "))
    assert "then the summary and one unified diff per target" in run_line

"""`orchestrator demo` from a folder a user may be in: a 0700 parent (a home
folder), as root, without bubblewrap (the sandbox's fallback). Every shell
step used to fail there; the demo must complete and verify."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import shape_env

pytestmark = pytest.mark.slow


def _path_without_bwrap(tmp_path: Path) -> str:
    """A PATH whose programs are the system's, less `bwrap` (the sandbox looks
    it up on PATH): the machine without bubblewrap, bubblewrap untouched."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/usr/sbin"):
        for entry in os.scandir(folder):
            link = bin_dir / entry.name
            if entry.name != "bwrap" and not link.exists():
                link.symlink_to(entry.path)
    return f"{Path(sys.executable).parent}:{bin_dir}"


def test_the_demo_completes_under_a_private_parent_without_bubblewrap(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    home.chmod(0o700)
    env = shape_env(home / "work", PATH=_path_without_bwrap(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "demo"],
        cwd=home / "work",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "chains intact" in result.stdout
    assert "3 succeeded, 0 failed, 0 waiting" in result.stdout
    assert len(list((home / "work" / "demo" / "patches").glob("*.patch"))) == 3

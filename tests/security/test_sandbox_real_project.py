"""A real project from the package index: rename a function with the
product's `replace` step, check the tree equals what `rg -l | xargs sed -i`
makes of a fresh copy, and run the project's own test suite in a shell step
through a toolchain (one `toolchains:` line, no policy edits).

The sdist is downloaded here (`pip download --no-deps --no-binary :all:`);
CI has the package index, so a failed download fails the test."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.cli_helpers import cli, shape_env

PROJECT, VERSION = "six", "1.16.0"  # pure Python, its tests (test_six.py) in the sdist
OLD, NEW = "add_metaclass", "add_meta_class"


def _sdist(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    got = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        + ["--dest", str(cache), f"{PROJECT}=={VERSION}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert got.returncode == 0, f"pip download failed:\n{got.stdout}\n{got.stderr}"
    (archive,) = cache.glob(f"{PROJECT}-{VERSION}.tar.gz")
    src = tmp_path / "src"
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="data")
    return src / f"{PROJECT}-{VERSION}"


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            out[str(path.relative_to(root))] = (path.stat().st_mode, path.read_bytes())
    return out


def test_rename_then_run_the_projects_own_tests_equals_rg_and_sed(tmp_path: Path) -> None:
    pristine = _sdist(tmp_path)
    repo = tmp_path / "work" / "repo"
    shutil.copytree(pristine, repo)
    by_hand = tmp_path / "by-hand"
    shutil.copytree(pristine, by_hand)
    listed = subprocess.run(["rg", "-l", OLD], cwd=by_hand, capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.strip(), listed.stderr
    subprocess.run(
        ["xargs", "sed", "-i", f"s/{OLD}/{NEW}/g"],
        input=listed.stdout,
        cwd=by_hand,
        check=True,
        text=True,
    )

    toolchain = str(Path(sys.prefix).resolve())  # a venv with pytest, as a user's would be
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"name: rename-{PROJECT}\n"
        "targets: [repo]\n"
        f"toolchains: [{toolchain}]\n"
        "steps:\n"
        f"  - {{kind: replace, pattern: {OLD}, replacement: {NEW}, literal: true}}\n"
        "  - kind: shell\n"
        # dbm.ndbm needs a C module an interpreter may be built without
        # (pyenv's here): that test fails outside the sandbox too.
        "    command: [python, -m, pytest, -q, -p, no:cacheprovider, test_six.py,"
        " -k, 'not dbm_ndbm']\n"
        "    env: {PYTHONDONTWRITEBYTECODE: '1'}\n"
        "    timeout_s: 300\n"
    )
    env = shape_env(tmp_path)
    done = cli(env, "run", str(spec), "--json", cwd=tmp_path / "work", timeout=600)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    result = json.loads(done.stdout)
    assert result["status"] == "completed" and result["counts"]["succeeded"] == 1
    (session,) = result["sessions"]
    # exit 0 from pytest: the suite was collected and passed (5: nothing collected)
    assert session["steps_ok"] == 2 and sorted(session["files_changed"]) == sorted(
        listed.stdout.split()
    )

    assert _tree(repo) == _tree(by_hand)  # identical trees: nothing else changed
    assert not filecmp.dircmp(repo, by_hand).diff_files
    assert OLD not in (repo / "six.py").read_text()

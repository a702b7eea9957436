"""Kept changesets (orchestrator.sandbox.kept): what a shell call changed,
written to disk before its completion is recorded, read back exactly,
dropped once applied, and what a dead worker left half done swept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from orchestrator.sandbox import aftercall, kept
from orchestrator.sandbox.apply import apply
from orchestrator.sandbox.changeset import Change, Changeset, Kind

EVERY_KIND = Changeset(
    (
        Change("a.txt", Kind.CREATED, after=b"new\n", mode_after=0o644),
        Change("b.txt", Kind.MODIFIED, b"old\n", b"old\nmore\n", 0o644, 0o644),
        Change("c.bin", Kind.DELETED, before=b"\x00\xff", mode_before=0o600),
        Change("d", Kind.DELETED, mode_before=0o755, is_dir=True),
        Change("e.sh", Kind.MODE, b"x", b"x", 0o644, 0o755),
        Change("f", Kind.SYMLINK, target="a.txt", target_before="gone"),
        Change("g", Kind.DIRECTORY, mode_after=0o700, is_dir=True),
        Change("h", Kind.SPECIAL, detail="fifo"),
    )
)


def test_a_kept_changeset_reads_back_exactly(tmp_path: Path) -> None:
    folder = kept.keep(tmp_path, "s1/3", EVERY_KIND)
    assert kept.held(tmp_path, "s1/3") == [folder]
    assert kept.held(tmp_path, "s1/30") == [] and kept.held(tmp_path, "s1/") == []
    assert kept.load(folder) == EVERY_KIND
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_dropped_folders_are_gone_and_never_held_again(tmp_path: Path) -> None:
    one = kept.keep(tmp_path, "s1/1", EVERY_KIND)
    two = kept.keep(tmp_path, "s1/1", Changeset())
    assert kept.held(tmp_path, "s1/1") == sorted([one, two])
    kept.drop(kept.held(tmp_path, "s1/1"))
    assert kept.held(tmp_path, "s1/1") == []  # renamed at once
    aftercall.settle()  # and removed after the call
    assert list(tmp_path.iterdir()) == []


def test_the_sweep_removes_what_dead_workers_left_and_nothing_held(tmp_path: Path) -> None:
    live = kept.keep(tmp_path, "s1/1", EVERY_KIND)
    half_dropped = tmp_path / "s1~2.abc.applied"
    half_dropped.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    half_written = tmp_path / f".tmp-{dead.stdout.strip()}-abc"
    half_written.mkdir()
    mine = tmp_path / f".tmp-{os.getpid()}-abc"  # a keep in progress in this process
    mine.mkdir()
    assert kept.sweep(tmp_path) == 2
    assert sorted(tmp_path.iterdir()) == sorted([live, mine])


def test_a_kept_changeset_applies_twice_to_the_same_workspace(tmp_path: Path) -> None:
    """What a redelivery does after a crash in the middle of the apply."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "b.txt").write_text("old\n")
    changes = Changeset(
        (
            Change("a.txt", Kind.CREATED, after=b"new\n", mode_after=0o644),
            Change("b.txt", Kind.MODIFIED, b"old\n", b"old\nmore\n", 0o644, 0o644),
            Change("f", Kind.SYMLINK, target="a.txt"),
        )
    )
    folder = kept.keep(tmp_path / "kept", "s/1", changes)
    apply(work, kept.load(folder))
    apply(work, kept.load(folder))
    assert (work / "a.txt").read_text() == "new\n"
    assert (work / "b.txt").read_text() == "old\nmore\n"
    assert os.readlink(work / "f") == "a.txt"


def test_the_crash_point_is_inert_without_its_file(tmp_path: Path, monkeypatch) -> None:
    kept.crash_point()  # not set: nothing
    monkeypatch.setenv(kept.CRASH_VAR, str(tmp_path / "absent"))
    kept.crash_point()  # set, but its file is not there: nothing

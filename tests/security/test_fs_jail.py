"""The filesystem jail against an adversary who owns the workspace: symlinks
out (planted before, or swapped in while a tool works, in a loop), `..`,
`/proc` links, FIFOs, sockets and devices, absurd names. Every case checks
the refusal and that nothing outside the workspace was read or changed."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.errors import ToolError, ToolInputError
from orchestrator.run.steps import DeleteStep, ReadStep, WriteStep
from orchestrator.tools.base import FileEdit
from orchestrator.tools.files import apply_edits, plan_delete, plan_write, read_file
from orchestrator.tools.jail import Jail, real_paths

CANARY = "CANARY-outside-the-workspace"


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """(workspace, outside): `outside` holds a canary no tool may read or touch.
    The process runs in an empty folder of its own, which must stay empty: a
    descriptor left unset (`dir_fd=None`) would mean "relative to the cwd"."""
    ws, out, cwd = tmp_path / "ws", tmp_path / "outside", tmp_path / "cwd"
    (ws / "d").mkdir(parents=True)
    out.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    (ws / "d" / "secret.txt").write_text("inside\n")
    (ws / "f.txt").write_text("inside\n")
    (out / "secret.txt").write_text(CANARY)
    before = _tree(out)
    yield ws, out
    assert _tree(out) == before, "something outside the workspace changed"
    assert list(cwd.iterdir()) == [], "something was written to the worker's cwd"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _refused(fn: Callable[[], object], match: str) -> None:
    with pytest.raises(ToolInputError, match=match):
        fn()


# --- planted before the call ---------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "../outside/secret.txt",
        "{out}/secret.txt",
        "/proc/self/root{out}/secret.txt",
        "/proc/self/cwd",
        "/proc/1/root/etc/passwd",
        "d/../../outside/secret.txt",
    ],
)
def test_symlinks_out_are_refused_for_read_write_and_delete(
    box: tuple[Path, Path], target: str
) -> None:
    ws, out = box
    (ws / "link").symlink_to(target.format(out=out))
    why = "outside the workspace|out of the workspace"
    _refused(lambda: read_file(ws, "link", 1000), why)
    _refused(lambda: plan_write(ws, WriteStep(path="link", content="x")), why)
    _refused(lambda: apply_edits(ws, [FileEdit("link", CANARY.encode(), b"x")]), why)
    _refused(lambda: plan_delete(ws, "link"), why)
    assert os.path.islink(ws / "link")


def test_a_symlinked_parent_out_is_refused_even_for_new_files(box: tuple[Path, Path]) -> None:
    ws, out = box
    (ws / "up").symlink_to(out, target_is_directory=True)
    _refused(lambda: apply_edits(ws, [FileEdit("up/new.txt", None, b"x")]), "outside")
    _refused(lambda: apply_edits(ws, [FileEdit("up/deeper/new.txt", None, b"x")]), "outside")
    _refused(lambda: read_file(ws, "up/secret.txt", 100), "outside")


def test_dot_dot_never_rises_above_the_root(box: tuple[Path, Path]) -> None:
    ws, _ = box
    (ws / "inner").symlink_to("d", target_is_directory=True)
    for rel in (
        "../outside/secret.txt",
        "d/../../outside/secret.txt",
        "inner/../../x",
        "missing/../../outside/secret.txt",
        "d/../d/../..",
    ):
        _refused(lambda: read_file(ws, rel, 100), r"climbs out|out of the workspace")


def test_symlinks_that_stay_inside_work(box: tuple[Path, Path]) -> None:
    ws, _ = box
    (ws / "a").symlink_to("b")
    (ws / "b").symlink_to("d/secret.txt")
    (ws / "abs").symlink_to(ws / "f.txt")
    (ws / "dl").symlink_to("d", target_is_directory=True)
    assert read_file(ws, "a", 100).output == "inside\n"
    assert read_file(ws, "abs", 100).output == "inside\n"
    assert read_file(ws, "dl/../f.txt", 100).output == "inside\n"
    apply_edits(ws, [FileEdit("dl/new.txt", None, b"new\n")])
    assert (ws / "d" / "new.txt").read_text() == "new\n"
    assert sorted(real_paths(ws, ["a", "dl/new.txt", "f.txt"])) == ["d/new.txt", "d/secret.txt"]


def test_symlink_loops_are_refused(box: tuple[Path, Path]) -> None:
    ws, _ = box
    (ws / "x").symlink_to("y")
    (ws / "y").symlink_to("x")
    (ws / "self").symlink_to("self/z")
    _refused(lambda: read_file(ws, "x", 100), "more than 40 symlinks")
    _refused(lambda: read_file(ws, "self", 100), "more than 40 symlinks")


def test_fifos_sockets_and_devices_are_refused_without_blocking(box: tuple[Path, Path]) -> None:
    ws, _ = box
    os.mkfifo(ws / "fifo")
    (ws / "fifolink").symlink_to("fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(ws / "sock"))
    try:
        _refused(lambda: read_file(ws, "fifo", 100), "is a FIFO")
        _refused(lambda: read_file(ws, "fifolink", 100), "is a FIFO")
        _refused(lambda: read_file(ws, "sock", 100), "is a socket")
        if os.geteuid() == 0:
            os.mknod(ws / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            _refused(lambda: read_file(ws, "null", 100), "is a device")
        (ws / "devnull").symlink_to("/dev/null")
        _refused(lambda: read_file(ws, "devnull", 100), "outside the workspace")
    finally:
        sock.close()


@pytest.mark.parametrize(
    "rel, why",
    [
        ("a\x00b", "NUL byte"),
        ("/etc/passwd", "is absolute"),
        ("x" * 256, "longer than 255"),
        ("/".join(["d"] * 2100), "more than any file system allows"),
    ],
)
def test_malformed_paths_are_refused(box: tuple[Path, Path], rel: str, why: str) -> None:
    ws, _ = box
    _refused(lambda: read_file(ws, rel, 100), why)
    _refused(lambda: apply_edits(ws, [FileEdit(rel, None, b"x")]), why)


def test_a_patch_with_one_refused_file_changes_nothing(box: tuple[Path, Path]) -> None:
    ws, out = box
    (ws / "up").symlink_to(out, target_is_directory=True)
    before = _tree(ws)
    _refused(
        lambda: apply_edits(
            ws,
            [
                FileEdit("f.txt", b"inside\n", b"changed\n"),
                FileEdit("new/dir/file.txt", None, b"new\n"),
                FileEdit("up/secret.txt", CANARY.encode(), b"x"),
            ],
        ),
        "outside",
    )
    assert _tree(ws) == before and not (ws / "new").exists()


def test_the_policy_sees_where_a_symlink_leads(tmp_path: Path) -> None:
    """`notes -> .env`: a read of `notes` is judged as a read of `.env`."""
    from orchestrator.guard.decision import decide
    from orchestrator.guard.policy import DEFAULT_POLICY
    from orchestrator.run.calls import touched
    from orchestrator.tools.registry import TOOLS

    ws = tmp_path
    (ws / ".env").write_text("TOKEN=x\n")
    (ws / "notes").symlink_to(".env")
    paths = touched(TOOLS["read"], ws, ReadStep(path="notes"), None)
    verdict = decide("read", {"path": "notes"}, DEFAULT_POLICY, tier="read-only", extra_paths=paths)
    assert verdict.decision == "deny" and verdict.rule_id == "deny-secrets"
    paths = touched(TOOLS["delete"], ws, DeleteStep(path="notes"), None)
    assert ("write", ".env") in paths


# --- swapped in while the tool works, in a loop -----------------------------------------


class Swapper(threading.Thread):
    """Flips `name` between what it is and a symlink out, as fast as it can."""

    def __init__(self, ws: Path, name: str, target: Path) -> None:
        super().__init__(daemon=True)
        self.ws, self.name, self.target = ws, name, target
        self.stop = threading.Event()
        self.flips = 0

    def run(self) -> None:
        real, aside = self.ws / self.name, self.ws / f".{self.name}.aside"
        while not self.stop.is_set():
            try:
                os.rename(real, aside)
                os.symlink(self.target, real)
                os.unlink(real)
                os.rename(aside, real)
                self.flips += 1
            except OSError:  # the tool created `name` in the gap: let it be, go on
                self._settle(real, aside)

    @staticmethod
    def _settle(real: Path, aside: Path) -> None:
        for _ in range(100):  # the tool may still be writing into what it made
            if not aside.exists():
                return
            if real.is_symlink() or real.is_file():
                real.unlink(missing_ok=True)
            elif real.is_dir():
                shutil.rmtree(real, ignore_errors=True)
            try:
                os.rename(aside, real)
            except OSError:
                continue

    def __enter__(self) -> Swapper:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(10)
        self._settle(self.ws / self.name, self.ws / f".{self.name}.aside")


ROUNDS = 1500


def _race(op: Callable[[], object]) -> tuple[int, int]:
    """Run `op` ROUNDS times; count the successes and the refusals (or the
    failures the swapping causes, such as a folder removed mid-write)."""
    ok = refused = 0
    for _ in range(ROUNDS):
        try:
            op()
            ok += 1
        except ToolError:
            refused += 1
    return ok, refused


def test_reads_racing_a_swapped_directory_never_leave(box: tuple[Path, Path]) -> None:
    ws, out = box
    seen: set[str] = set()

    def read() -> None:
        try:
            seen.add(read_file(ws, "d/secret.txt", 100).output)
        except ToolInputError as err:
            if "does not exist" not in str(err):
                raise

    with Swapper(ws, "d", out) as swapper:
        ok, refused = _race(read)
    assert swapper.flips > 0 and ok + refused == ROUNDS
    assert CANARY not in seen and seen <= {"inside\n"}


def test_reads_racing_a_swapped_file_never_leave(box: tuple[Path, Path]) -> None:
    ws, out = box
    seen: set[str] = set()

    def read() -> None:
        with Jail(ws) as jail:
            data = jail.read("f.txt")
        if data is not None:
            seen.add(data.decode())

    with Swapper(ws, "f.txt", out / "secret.txt"):
        _race(read)
    assert seen <= {"inside\n"}


def test_writes_racing_a_swapped_directory_never_leave(box: tuple[Path, Path]) -> None:
    ws, out = box
    with Swapper(ws, "d", out):
        _race(
            lambda: (
                apply_edits(ws, [FileEdit("d/new.txt", None, b"x")])
                if not (ws / "d" / "new.txt").exists()
                else apply_edits(ws, [FileEdit("d/new.txt", b"x", None)])
            )
        )
    assert not (out / "new.txt").exists()  # the fixture checks the rest of `outside`


def test_writes_racing_a_swapped_file_replace_the_link_not_its_target(
    box: tuple[Path, Path],
) -> None:
    ws, out = box

    def write() -> None:
        edits = plan_write(ws, WriteStep(path="f.txt", content="written\n"))
        apply_edits(ws, edits)

    with Swapper(ws, "f.txt", out / "secret.txt"):
        _race(write)
    assert (out / "secret.txt").read_text() == CANARY

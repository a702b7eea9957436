"""A file inside the workspace that is a hard link to a file outside it (more
links than the workspace holds) is hidden from shell commands like a denied
file, and refused by the file tools: the jail and the mask walk count names
with the same census (`orchestrator.guard.links`). First the pure count, then
the walk over real trees (any depth, names, extra links inside), then real
commands under bubblewrap, including a link made between two calls.

Tests needing bubblewrap skip without it, and FAIL when ORCH_REQUIRE_SERVICES=1."""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.guard.links import census, held_inside, unaccounted
from orchestrator.guard.policy import Limits
from orchestrator.run.steps import ShellStep
from orchestrator.sandbox.runtime import workspace_masks
from orchestrator.tools.jail import Jail
from orchestrator.tools.shell import run_shell
from tests.security.test_sandbox import HOST, Box, _need_bwrap, box  # noqa: F401
from tests.security.test_sandbox_masking import BUILTIN

SECRET = "OUTSIDE-SECRET-51c2"

# -- pure: the count -------------------------------------------------------------------


@given(st.lists(st.integers(0, 6)), st.dictionaries(st.integers(0, 8), st.integers(1, 5)))
def test_a_file_is_unaccounted_when_the_tree_holds_fewer_names_than_its_links(
    names: list[int], links: dict[int, int]
) -> None:
    counts = census(names)
    assert counts == dict(Counter(names))
    assert census(names, only={1, 2}) == {k: v for k, v in counts.items() if k in {1, 2}}
    short = unaccounted(links, counts)
    assert short == {k for k, n in links.items() if n > 1 and names.count(k) < n}
    assert all(held_inside(counts, k, n) == (k not in short) for k, n in links.items())


# -- the walk over real trees ----------------------------------------------------------

OLD = int(time.time()) - 3600
_name = st.sampled_from(["a", "b", "Data", "x.py", "notes.txt", "ä", "deep name", "-n"])
_file = st.lists(_name, min_size=1, max_size=4).map("/".join)


def _age(ws: Path) -> None:
    for p in [ws, *ws.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            os.utime(p, (OLD, OLD))


def _hidden(ws: Path) -> set[str]:
    root = ws.resolve()
    return {os.path.relpath(m.path, root) for m in workspace_masks(root, BUILTIN) if not m.dir}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(_file, min_size=1, max_size=8, unique=True),
    out=st.lists(st.booleans(), min_size=8, max_size=8),
    inside=st.lists(st.tuples(st.integers(0, 7), _file), max_size=4),
    aged=st.booleans(),
)
def test_the_walk_hides_exactly_the_files_linked_out_of_the_workspace(
    files: list[str], out: list[bool], inside: list[tuple[int, str]], aged: bool
) -> None:
    """Each workspace file may be a link to its own outside file; extra links
    made inside (`cp -l`) add names to some of them. Hidden: every name of
    a file with a name outside; never a file whose names are all inside.
    The jail refuses exactly those."""
    with tempfile.TemporaryDirectory() as tmp:
        ws, outside = Path(tmp, "ws"), Path(tmp, "outside")
        outside.mkdir()
        names: dict[str, str] = {}  # workspace name -> the file it is a name of
        made: list[str] = []
        for i, rel in enumerate(files):
            p = ws / rel
            if any(rel.startswith(m + "/") or m.startswith(rel + "/") for m in made):
                continue  # a file where another needs a folder
            p.parent.mkdir(parents=True, exist_ok=True)
            if out[i]:
                (outside / str(i)).write_text(SECRET)
                p.hardlink_to(outside / str(i))
            else:
                p.write_text("inside")
            made.append(rel)
            names[rel] = rel
        for which, rel in inside:
            if (
                not made
                or rel in names
                or any(rel.startswith(m + "/") or m.startswith(rel + "/") for m in names)
            ):
                continue
            target = made[which % len(made)]
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            (ws / rel).hardlink_to(ws / target)
            names[rel] = target
        if aged:
            _age(ws)
        linked_out = {made[i] for i in range(len(made)) if out[files.index(made[i])]}
        expected = {rel for rel, of in names.items() if of in linked_out}
        assert _hidden(ws) == expected
        with Jail(ws) as jail:
            refused = {rel for rel in names if not jail.links_inside(os.lstat(ws / rel))}
        assert refused == expected


def test_a_link_made_between_two_walks_is_hidden_on_the_next(tmp_path: Path) -> None:
    """The second walk trusts every folder inotify did not report: the link's
    folder is reported (an entry made), and its other folders are kept."""
    ws = tmp_path / "ws"
    (ws / "src/deep").mkdir(parents=True)
    (ws / "src/deep/app.py").write_text("ok")
    (ws / "docs").mkdir()
    (ws / "docs/a.md").write_text("ok")
    (tmp_path / "secret").write_text(SECRET)
    _age(ws)
    assert _hidden(ws) == set()
    assert _hidden(ws) == set()  # kept and watched
    (ws / "src/deep/cfg.txt").hardlink_to(tmp_path / "secret")
    assert _hidden(ws) == {"src/deep/cfg.txt"}
    (ws / "docs/copy").hardlink_to(ws / "src/deep/cfg.txt")  # another name, still linked out
    assert _hidden(ws) == {"src/deep/cfg.txt", "docs/copy"}
    (tmp_path / "secret").unlink()  # no name outside any more: both names are the workspace's
    assert _hidden(ws) == set()


def test_a_link_made_elsewhere_to_a_workspace_file_changes_nothing_it_shows(tmp_path: Path) -> None:
    """A link made outside to a workspace file gives it a name outside: hidden
    while that name is there (its content is the workspace's own, but the
    count cannot tell), shown again once it is gone."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("ok")
    _age(ws)
    assert _hidden(ws) == set()
    (tmp_path / "alias").hardlink_to(ws / "a.txt")
    (ws / "b.txt").hardlink_to(ws / "a.txt")  # its folder is read again: a.txt counted
    assert _hidden(ws) == {"a.txt", "b.txt"}
    (tmp_path / "alias").unlink()
    assert _hidden(ws) == set()


# -- real commands under bubblewrap ----------------------------------------------------


def _cat(box: Box, *names: str) -> str:
    step = ShellStep(command=["bash", "-c", 'cat "$@" 2>&1; ls -la', "-", *names], timeout_s=20)
    return run_shell(box.ws, step, limits=Limits(), mode="bwrap", host=HOST).output


def test_a_shell_command_reads_nothing_of_a_file_linked_out_of_the_workspace(box: Box) -> None:
    _need_bwrap()
    secret = box.tmp / "outside-secret"
    secret.write_text(SECRET + "\n")
    (box.ws / "sub/dir").mkdir(parents=True)
    (box.ws / "sub/dir/innocent.txt").hardlink_to(secret)
    (box.ws / "mine.txt").write_text("mine\n")
    (box.ws / "also-mine.txt").hardlink_to(box.ws / "mine.txt")  # both names inside: shown
    box.before = box.outside()
    out = _cat(box, "sub/dir/innocent.txt", "mine.txt", "also-mine.txt")
    assert SECRET not in out, out
    assert out.count("mine") >= 2, out
    grep = ShellStep(command=["grep", "-r", "-a", SECRET, "."], timeout_s=20, ok_exit_codes=[1])
    assert SECRET not in run_shell(box.ws, grep, limits=Limits(), mode="bwrap", host=HOST).output
    assert secret.read_text() == SECRET + "\n"
    box.assert_contained()


def test_a_link_made_between_two_shell_calls_is_hidden_in_the_next(box: Box) -> None:
    _need_bwrap()
    secret = box.tmp / "outside-secret"
    secret.write_text(SECRET + "\n")
    (box.ws / "src").mkdir()
    (box.ws / "src/app.py").write_text("app\n")
    _age(box.ws)
    box.before = box.outside()
    assert SECRET not in _cat(box, "src/app.py")
    assert "app" in _cat(box, "src/app.py")  # the walk is kept and watched now
    (box.ws / "src/notes.txt").hardlink_to(secret)  # made by someone else, between calls
    out = _cat(box, "src/notes.txt", "src/app.py")
    assert SECRET not in out and "app" in out, out
    box.assert_contained()

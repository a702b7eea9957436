"""Refusals the jail used to make only after the policy had allowed the call
(so the ledger said `allow` and the step failed with exit 1) are now decided
at the policy, before anything runs: each path kind the jail refuses, for
each tool that can name it, is a `PermissionDecided(deny)` naming its rule
and a PolicyRefused (exit 3). Also: protected paths in any case, hard links
to files outside the workspace, and symlinks a patch would add.

Real runner, real store (SQLite), real files; the pure decision is checked
as a function with hypothesis generating the case variants."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from events.replay import replay
from events.store import open_store
from orchestrator.guard.decision import decide, decide_request
from orchestrator.guard.facts import PathFact
from orchestrator.guard.policy import DEFAULT_POLICY
from orchestrator.run.calls import PolicyRefused
from orchestrator.run.steps import (
    DeleteStep,
    ListStep,
    PatchStep,
    ReadStep,
    ReplaceStep,
    SearchStep,
    ShellStep,
    WriteStep,
)
from orchestrator.tools.files import apply_edits, plan_patch, read_file
from orchestrator.tools.jail import path_facts
from orchestrator.tools.search import search
from tests.factories import run_one_step

CANARY = "CANARY-outside-the-workspace"


def _run(tmp_path: Path, work: Path, step: Any) -> tuple[str, Any, list[str]]:
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    sid, status = run_one_step(store, work, step)
    types = [e.type for e in store.read_stream(sid)]
    return status, replay(store, sid), types


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path]:
    work, out = tmp_path / "repo", tmp_path / "outside"
    (work / "sub").mkdir(parents=True)
    out.mkdir()
    (out / "secret.txt").write_text(CANARY)
    (work / "f.txt").write_text("inside\n")
    return work, out


def _symlink_out(work: Path, out: Path) -> str:
    (work / "link").symlink_to(out / "secret.txt")
    return "link"


def _dir_link_out(work: Path, out: Path) -> str:
    (work / "dlink").symlink_to(out)
    return "dlink/secret.txt"


def _fifo(work: Path, out: Path) -> str:
    os.mkfifo(work / "pipe")
    return "pipe"


def _socket(work: Path, out: Path) -> str:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(work / "sock"))
    sock.close()
    return "sock"


def _device(work: Path, out: Path) -> str:
    os.mknod(work / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # as /dev/null
    return "null"


def _dotdot(work: Path, out: Path) -> str:
    return "../outside/secret.txt"


KINDS: dict[str, tuple[Callable[[Path, Path], str], str]] = {
    "symlink-out": (_symlink_out, "path-escapes-workspace"),
    "dir-symlink-out": (_dir_link_out, "path-escapes-workspace"),
    "fifo": (_fifo, "path-special-file"),
    "socket": (_socket, "path-special-file"),
    "device": (_device, "path-special-file"),
    "dotdot": (_dotdot, "outside-workspace"),
}


def _step(tool: str, rel: str) -> Any:
    if tool == "read":
        return ReadStep(path=rel)
    if tool == "write":
        return WriteStep(path=rel, content="x")
    if tool == "delete":
        return DeleteStep(path=rel)
    return PatchStep(diff=f"--- a/{rel}\n+++ b/{rel}\n@@ -1 +1 @@\n-{CANARY}\n+x\n")


@pytest.mark.parametrize("tool", ["read", "write", "delete", "patch"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_refused_path_is_denied_by_rule_before_the_tool_runs(
    tmp_path: Path, box: tuple[Path, Path], kind: str, tool: str
) -> None:
    work, out = box
    make, rule = KINDS[kind]
    rel = make(work, out)
    status, state, types = _run(tmp_path, work, _step(tool, rel))
    assert status == "failed"
    [entry] = state.ledger.entries
    assert entry.decision == "deny", entry.reason
    assert entry.rule_id in {rule, "path-escapes-workspace", "outside-workspace"}, entry
    if kind in ("fifo", "socket", "device"):
        assert entry.rule_id == "path-special-file", entry
    assert "ToolCallStarted" not in types
    assert state.session.error.startswith("PolicyRefused: ")
    assert PolicyRefused.exit_code == 3
    assert (out / "secret.txt").read_text() == CANARY


@pytest.mark.parametrize(
    ("cwd", "setup"),
    [("..", None), ("/tmp", None), ("sub/../..", None), ("away", "dir-link"), ("f.txt", None)],
)
def test_a_shell_cwd_outside_the_workspace_is_denied_before_it_runs(
    tmp_path: Path, box: tuple[Path, Path], cwd: str, setup: str | None
) -> None:
    work, out = box
    if setup == "dir-link":
        (work / "away").symlink_to(out)
    status, state, types = _run(tmp_path, work, ShellStep(command=("ls",), cwd=cwd))
    assert status == "failed"
    [entry] = state.ledger.entries
    assert (entry.decision, entry.rule_id) == ("deny", "shell-cwd-outside"), entry
    assert "ToolCallStarted" not in types


def test_a_listing_through_a_symlink_out_is_denied(tmp_path: Path, box: tuple[Path, Path]) -> None:
    work, out = box
    (work / "away").symlink_to(out)
    status, state, _ = _run(tmp_path, work, ListStep(path="away"))
    [entry] = state.ledger.entries
    assert (status, entry.decision, entry.rule_id) == (
        "failed",
        "deny",
        "path-escapes-workspace",
    )


# --- hard links ------------------------------------------------------------------------


def test_a_hard_link_to_a_file_outside_is_denied_and_its_content_never_read(
    tmp_path: Path, box: tuple[Path, Path]
) -> None:
    work, out = box
    os.link(out / "secret.txt", work / "notes.txt")
    for step in (ReadStep(path="notes.txt"), WriteStep(path="notes.txt", content="x")):
        (tmp_path / step.kind).mkdir()
        status, state, types = _run(tmp_path / step.kind, work, step)
        [entry] = state.ledger.entries
        assert (status, entry.decision, entry.rule_id) == (
            "failed",
            "deny",
            "path-hardlink-outside",
        )
        assert "ToolCallStarted" not in types
        assert all(CANARY not in str(e) for e in state.session.calls)
    assert (out / "secret.txt").read_text() == CANARY


def _hardlink_step(tool: str, rel: str) -> Any:
    if tool == "search":
        return SearchStep(pattern="CANARY")
    if tool == "replace":
        return ReplaceStep(pattern="CANARY", replacement="x")
    if tool == "patch":
        return PatchStep(diff=f"--- a/{rel}\n+++ b/{rel}\n@@ -1 +1 @@\n-{CANARY}\n+x\n")
    return _step(tool, rel)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    folder=st.lists(st.sampled_from(["a", "Src", "sub", "deep"]), max_size=3).map("/".join),
    name=st.sampled_from(["notes.txt", "x.py", "README", "data.json"]),
    more_inside=st.integers(0, 2),
    outside=st.booleans(),
    tool=st.sampled_from(["read", "write", "delete", "patch", "replace", "search"]),
)
def test_no_file_tool_reaches_a_file_outside_through_a_hard_link(
    tmp_path_factory: pytest.TempPathFactory,
    folder: str,
    name: str,
    more_inside: int,
    outside: bool,
    tool: str,
) -> None:
    """The class: a regular file of the workspace, at any depth and name,
    with any number of other names inside the workspace, one of whose links
    is outside it. Every file tool is denied by rule before it runs (search
    skips it: nothing of it reaches the result); with all its links inside,
    it is an ordinary file."""
    tmp = tmp_path_factory.mktemp("hl")
    work, out = tmp / "repo", tmp / "outside"
    (work / "other").mkdir(parents=True)
    out.mkdir()
    (out / "secret.txt").write_text(CANARY + "\n")
    rel = f"{folder}/{name}" if folder else name
    (work / rel).parent.mkdir(parents=True, exist_ok=True)
    os.link(out / "secret.txt", work / rel)
    for i in range(more_inside):
        os.link(work / rel, work / "other" / f"alias{i}.txt")
    if not outside:
        (out / "secret.txt").unlink()
    status, state, types = _run(tmp, work, _hardlink_step(tool, rel))
    [entry] = state.ledger.entries
    if outside:
        assert (out / "secret.txt").read_text() == CANARY + "\n"
        assert os.stat(out / "secret.txt").st_nlink == 2 + more_inside
        store = open_store(str(tmp / "events.sqlite"))
        recorded = [
            e.payload.model_dump_json() for e in store.read_stream(state.session.session_id)
        ]
        assert not any(CANARY in text for text in recorded), tool
        if tool == "search":
            assert (status, entry.decision) == ("completed", "allow")
            for rg in (True, False):
                assert search(work, SearchStep(pattern="CANARY"), use_rg=rg).count == 0
        else:
            assert (status, entry.decision, entry.rule_id) == (
                "failed",
                "deny",
                "path-hardlink-outside",
            ), (tool, entry)
            assert "ToolCallStarted" not in types
    else:  # an ordinary file: deleting it asks, as deleting any file does
        done = ("waiting", "ask") if tool == "delete" else ("completed", "allow")
        assert (status, entry.decision) == done, (tool, state.session.error)


def test_a_hard_link_made_inside_the_workspace_is_an_ordinary_file(
    tmp_path: Path, box: tuple[Path, Path]
) -> None:
    work, _ = box
    os.link(work / "f.txt", work / "sub" / "again.txt")
    [fact] = path_facts(work, [("read", "sub/again.txt")])
    assert fact.kind == "file" and not fact.links_outside
    status, state, _ = _run(tmp_path, work, ReadStep(path="sub/again.txt"))
    assert status == "completed", state.session.error
    assert read_file(work, "sub/again.txt", 100).output == "inside\n"


# --- symlinks a patch would add --------------------------------------------------------


LINK_PARTS = [
    "..",
    ".",
    "sub",
    "f.txt",
    "away",
    "outside",
    "secret.txt",
    "missing",
    ".env",
    "alias",
    ".git",
    "hooks",
    "pre-commit",
    "repo",
]


def _link_diff(name: str, target: str) -> str:
    return (
        f"diff --git a/{name} b/{name}\nnew file mode 120000\nindex 0000000..1111111\n"
        f"--- /dev/null\n+++ b/{name}\n@@ -0,0 +1 @@\n+{target}\n\\ No newline at end of file\n"
    )


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(["ln", "sub/ln", "new/deeper/ln"]),
    parts=st.lists(st.sampled_from(LINK_PARTS), min_size=1, max_size=4),
    absolute=st.booleans(),
)
@example(name="sub/ln", parts=[".", ".."], absolute=False)  # `./..` from sub/: the root, inside
def test_a_patch_adding_a_symlink_is_decided_by_where_it_leads(
    tmp_path_factory: pytest.TempPathFactory, name: str, parts: list[str], absolute: bool
) -> None:
    """The class: a new symlink at any depth, its target any mix of `..`,
    folders, files, symlinks already there (one leading out, one to `.env`)
    and protected names, relative or absolute. Inside the workspace and not
    protected: applied as a link, recorded, and the recorded diff rebuilds
    it (`git apply`, and a patch step on a fresh copy). Leading out (or
    absolute): denied by `symlink-escape`, the shell changeset's rule; to a
    protected path: denied by that path's rule. Never a regular file."""
    tmp = tmp_path_factory.mktemp("ln")
    work, out = tmp / "repo", tmp / "outside"
    (work / "sub").mkdir(parents=True)
    out.mkdir()
    (out / "secret.txt").write_text(CANARY)
    (work / "f.txt").write_text("inside\n")
    (work / ".env").write_text("KEY=1\n")
    (work / "away").symlink_to(out)
    (work / "alias").symlink_to(".env")
    fresh = tmp / "fresh"
    shutil.copytree(work, fresh, symlinks=True)
    target = (str(work) + "/" if absolute else "") + "/".join(parts)
    status, state, types = _run(tmp, work, PatchStep(diff=_link_diff(name, target)))
    [entry] = state.ledger.entries
    real = os.path.realpath(work / os.path.dirname(name) / target)
    named = [p for p in parts if p not in ("", ".")]  # `.` is no name (never a link)
    climbs = [i for i, p in enumerate(named) if p == ".."]
    lexical = os.path.normpath(os.path.join(os.path.dirname(name), "/".join(parts)))
    inside = (
        not absolute
        and (real + "/").startswith(str(work.resolve()) + "/")
        # a target that climbs out lexically, or climbs after a name (which
        # may be a symlink: `away/..`), is judged as leading out
        and not (lexical == ".." or lexical.startswith("../"))
        and not (climbs and any(p != ".." for p in named[: climbs[-1]]))
    )
    if not inside:
        assert (entry.decision, entry.rule_id) == ("deny", "symlink-escape"), (target, entry)
    elif (
        decide("write", {"path": os.path.relpath(real, work.resolve())}, DEFAULT_POLICY).decision
        == "deny"
    ):
        assert entry.decision == "deny" and entry.rule_id != "symlink-escape", (target, entry)
    else:
        assert (status, entry.decision) == ("completed", "allow"), (target, state.session.error)
        assert os.readlink(work / name) == target
        diff = _recorded_diff(tmp, state)
        again = tmp / "again"
        shutil.copytree(fresh, again, symlinks=True)
        subprocess.run(["git", "apply", "-"], input=diff.encode(), cwd=again, check=True)
        assert os.readlink(again / name) == target
        patched = tmp / "patched"
        shutil.copytree(fresh, patched, symlinks=True)
        apply_edits(patched, plan_patch(patched, PatchStep(diff=diff)))
        assert os.readlink(patched / name) == target
        return
    assert status == "failed" and "ToolCallStarted" not in types
    assert not os.path.lexists(work / name)
    assert (out / "secret.txt").read_text() == CANARY


def _recorded_diff(tmp: Path, state: Any) -> str:
    store = open_store(str(tmp / "events.sqlite"))
    [diff] = [
        e.payload.diff
        for e in store.read_stream(state.session.session_id)
        if e.type == "FileChanged"
    ]
    return diff


# --- protected paths in any case ---------------------------------------------------------


def _case_variants(word: str) -> st.SearchStrategy[str]:
    return st.tuples(*(st.sampled_from(sorted({c.lower(), c.upper()})) for c in word)).map("".join)


PROTECTED = [
    (".env", "read", "deny-secrets"),
    ("config/.env.production", "read", "deny-secrets"),
    (".ssh/id_rsa", "read", "deny-secrets"),
    ("deploy/key.pem", "write", "deny-secrets"),
    (".git/hooks/pre-commit", "write", "deny-git-internals-write"),
    ("sub/.git/config", "write", "deny-git-internals-write"),
]


@settings(max_examples=150, deadline=None)
@given(
    case=st.sampled_from(PROTECTED).flatmap(lambda p: st.tuples(_case_variants(p[0]), st.just(p)))
)
def test_protected_paths_are_denied_in_every_case(case: tuple[str, tuple[str, str, str]]) -> None:
    variant, (_, access, rule) = case
    tool = "read" if access == "read" else "write"
    v = decide(tool, {"path": variant}, DEFAULT_POLICY)
    assert v.decision == "deny" and rule in {m.rule_id for m in v.matches}, (variant, v)
    if access == "read":  # a shell's writes are judged on its changeset (below)
        shell = decide_request("shell", DEFAULT_POLICY, command=f"cat {variant}")
        assert shell.decision == "deny", (variant, shell)


def test_folding_case_never_widens_an_allow_rule() -> None:
    from orchestrator.guard.policy import parse_policy

    pol = parse_policy({"paths": [{"id": "allow-docs", "decision": "allow", "paths": ["docs/**"]}]})
    [rule] = [r for r in pol.path_rules if r.id == "allow-docs"]
    assert rule.matches("docs/a.md") and not rule.matches("DOCS/a.md")


# --- the pure decision on facts ------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    access=st.sampled_from(["read", "write", "cwd"]),
    fact=st.one_of(
        st.builds(
            PathFact,
            access=st.just("read"),
            path=st.text(min_size=1, max_size=20),
            refusal=st.sampled_from(["escape", "loop", "invalid", "symlink"]),
            detail=st.just("leaves"),
        ),
        st.builds(
            PathFact,
            access=st.just("read"),
            path=st.text(min_size=1, max_size=20),
            kind=st.sampled_from(["fifo", "socket", "device"]),
        ),
        st.builds(
            PathFact,
            access=st.just("read"),
            path=st.text(min_size=1, max_size=20),
            kind=st.just("file"),
            links_outside=st.just(True),
        ),
    ),
    elevated=st.booleans(),
)
def test_every_refusing_fact_is_a_deny_no_elevation_lifts(
    access: str, fact: PathFact, elevated: bool
) -> None:
    fact = PathFact(
        access, fact.path, fact.kind, fact.real, fact.refusal, fact.detail, fact.links_outside
    )
    tool = "shell" if access == "cwd" else ("read" if access == "read" else "write")
    args = {"command": ["ls"]} if tool == "shell" else {"path": "f.txt", "content": "x"}
    v = decide(tool, args, DEFAULT_POLICY, facts=[fact], elevated=elevated)
    assert v.decision == "deny", v
    assert v.rule_id.startswith(("path-", "patch-", "shell-cwd")), v.rule_id


@settings(max_examples=100, deadline=None)
@given(
    variant=st.sampled_from(
        [".env", ".git/hooks/pre-commit", "a/.git/hooks/post-checkout"]
    ).flatmap(_case_variants)
)
def test_a_shell_changeset_writing_a_protected_path_in_any_case_is_refused(variant: str) -> None:
    from orchestrator.guard.changeset import judge, shell_denials
    from orchestrator.sandbox.changeset import Change, Changeset, Kind

    change = Change(variant, Kind.CREATED, after=b"#!/bin/sh\n")
    verdict = judge(Changeset((change,)), shell_denials(DEFAULT_POLICY), (), "/ws")
    assert verdict.decision == "deny", (variant, verdict)


def test_a_patch_retargeting_an_existing_symlink_is_denied(
    tmp_path: Path, box: tuple[Path, Path]
) -> None:
    """git writes `index a..b 120000` when a link's target changes: the
    patch would otherwise be applied through the link, to its target."""
    work, _ = box
    (work / "ln").symlink_to("f.txt")
    diff = (
        "diff --git a/ln b/ln\nindex 1111111..2222222 120000\n--- a/ln\n+++ b/ln\n"
        "@@ -1 +1 @@\n-f.txt\n\\ No newline at end of file\n+../outside/secret.txt\n"
        "\\ No newline at end of file\n"
    )
    status, state, _ = _run(tmp_path, work, PatchStep(diff=diff))
    [entry] = state.ledger.entries
    assert (status, entry.decision, entry.rule_id) == ("failed", "deny", "patch-symlink")
    assert os.readlink(work / "ln") == "f.txt" and (work / "f.txt").read_text() == "inside\n"

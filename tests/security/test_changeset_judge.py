"""The whole-changeset judgement: pure, no mocks, families of changesets
generated rather than single examples."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.guard.changeset import (
    DELETE_RULE,
    GIT_CONFIG,
    GIT_HOOKS,
    SETID_RULE,
    PathDenial,
    Verdict,
    judge,
    shell_denials,
)
from orchestrator.guard.policy import DEFAULT_POLICY
from orchestrator.sandbox.changeset import Change, Changeset, Kind

WS = "/work/repo"
# Shared CI cores: generation may be slow, and tests never assert timings.
LOADED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
DENIALS = shell_denials(DEFAULT_POLICY)
SECRETS = PathDenial("deny-secrets", (".env", ".env.*", "**/.env", "**/.env.*"), "credentials")

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)
plain_dirs = st.lists(names.filter(lambda n: n not in ("secrets",)), max_size=3)


def _rel(parts: list[str], name: str) -> str:
    return "/".join([*parts, name])


@st.composite
def harmless(draw: st.DrawFn) -> Change:
    """A change any policy allows: a source file made, changed, re-moded, a
    folder made, a symlink staying inside."""
    path = _rel(draw(plain_dirs), draw(names) + draw(st.sampled_from([".py", ".txt", ".md"])))
    kind = draw(st.sampled_from([Kind.CREATED, Kind.MODIFIED, Kind.MODE, Kind.DIRECTORY]))
    return Change(path, kind, b"a" if kind is not Kind.CREATED else None, b"b", 0o644, 0o755)


@st.composite
def inside_links(draw: st.DrawFn) -> Change:
    parts = draw(plain_dirs)
    up = draw(st.integers(0, len(parts)))
    target = "/".join([".."] * up + draw(st.lists(names, min_size=1, max_size=2)))
    absolute = draw(st.booleans())
    if absolute:
        target = f"{WS}/{draw(names)}"
    return Change(_rel(parts, draw(names)), Kind.SYMLINK, target=target)


@st.composite
def escaping_links(draw: st.DrawFn) -> Change:
    parts = draw(plain_dirs)
    up = len(parts) + draw(st.integers(1, 3))
    relative = "/".join([".."] * up + [draw(names)])
    target = draw(st.sampled_from([relative, "/etc/passwd", "/work/repo2/x", "/", "/work"]))
    return Change(_rel(parts, draw(names)), Kind.SYMLINK, target=target)


@st.composite
def env_writes(draw: st.DrawFn) -> Change:
    """Writes to `.env` files in any case, at any depth, in any way."""
    base = draw(st.sampled_from([".env", ".env.production", ".env.local"]))
    cased = "".join(
        c.upper() if draw(st.booleans()) else c for c in base
    )  # .ENV, .Env.Production, ...
    kind = draw(st.sampled_from([Kind.CREATED, Kind.MODIFIED, Kind.DELETED, Kind.MODE]))
    return Change(_rel(draw(plain_dirs), cased), kind, b"x", b"y")


@st.composite
def hook_writes(draw: st.DrawFn) -> Change:
    prefix = draw(st.sampled_from(["", "sub/", "a/b/"]))
    git = "".join(c.upper() if draw(st.booleans()) else c for c in ".git")
    name = draw(st.sampled_from(["pre-commit", "post-checkout", "fsmonitor-watchman"]))
    kind = draw(st.sampled_from([Kind.CREATED, Kind.MODIFIED, Kind.SYMLINK, Kind.MODE]))
    return Change(f"{prefix}{git}/hooks/{name}", kind, None, b"#!/bin/sh\n", target="x")


def _with(changes: list[Change], extra: Change, at: int) -> Changeset:
    at = min(at, len(changes))
    return Changeset(tuple([*changes[:at], extra, *changes[at:]]))


@settings(max_examples=100, **LOADED)
@given(st.lists(st.one_of(harmless(), inside_links()), max_size=12))
def test_changes_inside_the_rules_are_allowed(changes: list[Change]) -> None:
    assert judge(Changeset(tuple(changes)), DENIALS, (), WS).decision == "allow"


@settings(max_examples=100, **LOADED)
@given(st.lists(harmless(), max_size=8), env_writes(), st.integers(0, 8))
def test_any_write_to_an_env_file_denies_the_whole_changeset(
    changes: list[Change], bad: Change, at: int
) -> None:
    verdict = judge(_with(changes, bad, at), [SECRETS], (), WS)
    assert (verdict.decision, verdict.rule_id, verdict.path) == ("deny", "deny-secrets", bad.path)
    assert bad.path in verdict.reason


@settings(max_examples=100, **LOADED)
@given(st.lists(harmless(), max_size=8), hook_writes(), st.integers(0, 8))
def test_a_git_hook_in_any_case_is_denied(changes: list[Change], bad: Change, at: int) -> None:
    verdict = judge(_with(changes, bad, at), DENIALS, (), WS)
    assert verdict.decision == "deny" and verdict.path == bad.path
    assert verdict.rule_id in ("deny-git-hooks", "symlink-escape")


@settings(max_examples=100, **LOADED)
@given(st.lists(harmless(), max_size=8), escaping_links(), st.integers(0, 8))
def test_a_symlink_leading_out_is_denied(changes: list[Change], bad: Change, at: int) -> None:
    verdict = judge(_with(changes, bad, at), DENIALS, (), WS)
    assert (verdict.decision, verdict.rule_id, verdict.path) == (
        "deny",
        "symlink-escape",
        bad.path,
    )
    assert str(bad.target) in verdict.reason


@pytest.mark.parametrize(
    ("kind", "detail", "rule"),
    [
        (Kind.HARDLINK, "", "hardlink"),
        (Kind.SPECIAL, "fifo", "special-file"),
        (Kind.SPECIAL, "socket", "special-file"),
        (Kind.SPECIAL, "char device 1:3", "special-file"),
        (Kind.SPECIAL, "block device 8:0", "special-file"),
    ],
)
@settings(max_examples=50, **LOADED)
@given(changes=st.lists(harmless(), max_size=6), name=names, at=st.integers(0, 6))
def test_links_and_special_files_are_denied_wherever_they_are(
    kind: Kind, detail: str, rule: str, changes: list[Change], name: str, at: int
) -> None:
    bad = Change(f"src/{name}", kind, detail=detail)
    verdict = judge(_with(changes, bad, at), DENIALS, (), WS)
    assert (verdict.decision, verdict.rule_id, verdict.path) == ("deny", rule, bad.path)
    assert detail in verdict.reason


@settings(max_examples=100, **LOADED)
@given(st.lists(harmless(), max_size=8), plain_dirs, names, st.booleans())
def test_deleting_a_tracked_file_asks_like_rm_and_an_untracked_one_is_allowed(
    changes: list[Change], parts: list[str], name: str, tracked: bool
) -> None:
    gone = Change(_rel(parts, name + ".py"), Kind.DELETED, before=b"x")
    others = [c for c in changes if c.path != gone.path]
    known = {gone.path} if tracked else {f"other/{name}.py"}
    verdict = judge(Changeset((*others, gone)), DENIALS, known, WS)
    if tracked:
        assert verdict == Verdict(
            "ask", DELETE_RULE, f"deletes the tracked file {gone.path}", gone.path
        )
    else:
        assert verdict.decision == "allow"


@settings(max_examples=100, **LOADED)
@given(env_writes(), hook_writes())
def test_deny_wins_over_ask_whatever_the_order(secret: Change, hook: Change) -> None:
    gone = Change("src/a.py", Kind.DELETED, before=b"x")
    for order in ((gone, secret), (secret, gone), (gone, hook), (hook, gone)):
        assert judge(Changeset(order), [*DENIALS], {"src/a.py"}, WS).decision == "deny"


def test_git_may_write_its_own_files_and_hook_samples_but_not_hooks() -> None:
    commit = Changeset(
        (
            Change(".git/index", Kind.MODIFIED, b"a", b"b"),
            Change(".git/objects/ab/cdef", Kind.CREATED, None, b"x"),
            Change(".git/refs/heads/main", Kind.MODIFIED, b"1", b"2"),
            Change(".git/hooks/pre-commit.sample", Kind.CREATED, None, b"#"),
        )
    )
    assert judge(commit, DENIALS, (), WS).decision == "allow"
    assert GIT_HOOKS in DENIALS and GIT_CONFIG in DENIALS
    assert all(d.rule_id != "deny-git-internals-write" for d in DENIALS)


@settings(max_examples=100, **LOADED)
@given(
    changes=st.lists(harmless(), max_size=6),
    name=names,
    at=st.integers(0, 6),
    kind=st.sampled_from([Kind.CREATED, Kind.MODIFIED, Kind.MODE, Kind.DIRECTORY]),
    bits=st.sampled_from([0o4000, 0o2000, 0o6000]),
    perms=st.integers(0, 0o1777),
)
def test_set_id_bits_are_denied_except_a_folders_group_inheritance(
    changes: list[Change], name: str, at: int, kind: Kind, bits: int, perms: int
) -> None:
    """A root worker applying a set-user-ID file would plant a program that
    runs as root for anyone: denied, whatever else the changeset holds. A
    folder's set-group-ID only passes its group on (mkdir in such a folder
    inherits it): allowed."""
    mode = bits | perms
    bad = Change(f"bin/{name}", kind, None, b"x", None, mode, is_dir=kind is Kind.DIRECTORY)
    verdict = judge(_with(changes, bad, at), DENIALS, (), WS)
    if kind is Kind.DIRECTORY and not mode & 0o4000:
        assert verdict.decision == "allow"
    else:
        assert (verdict.decision, verdict.rule_id, verdict.path) == ("deny", SETID_RULE, bad.path)
        assert f"{mode:o}" in verdict.reason and "chmod u-s,g-s" in verdict.reason


@pytest.mark.parametrize("top", ["", "vendor/lib/"])
@pytest.mark.parametrize(
    ("path", "rule"),
    [
        (".git/hooks/post-checkout", "deny-git-hooks"),
        (".git/modules/sub/hooks/post-checkout", "deny-git-hooks"),
        (".git/modules/a/modules/b/hooks/pre-push", "deny-git-hooks"),
        (".git/config.worktree", "deny-git-config"),
        (".git/modules/sub/config", "deny-git-config"),
        (".git/modules/a/modules/b/config", "deny-git-config"),
        (".git/worktrees/wt/config.worktree", "deny-git-config"),
        (".git/modules/sub/hooks/pre-commit.sample", None),
        (".git/modules/sub/index", None),
        (".git/refs/heads/config", None),  # a branch named config
        (".git/refs/heads/hooks/x", None),  # a branch named hooks/x
    ],
)
def test_every_git_hook_and_config_is_denied_where_git_reads_one(
    top: str, path: str, rule: str | None
) -> None:
    """A hook or a config key (core.fsmonitor, core.hooksPath) runs a program
    at the next git command: in the repository, a nested one, a submodule's
    git folder (.git/modules/, nested), a worktree's. git's other writes there
    (objects, refs, the index, hook samples) are its own work."""
    for kind in (Kind.CREATED, Kind.MODIFIED, Kind.MODE):
        verdict = judge(Changeset((Change(top + path, kind, b"a", b"b", 0o644, 0o755),)), DENIALS)
        if rule is None:
            assert verdict.decision == "allow", verdict
        else:
            assert (verdict.decision, verdict.path) == ("deny", top + path)
            # the policy's own rule may name .git/config first; the built-in one always holds
            assert verdict.rule_id in (rule, "deny-secrets")
            assert (
                judge(
                    Changeset((Change(top + path, kind, b"a", b"b"),)), (GIT_HOOKS, GIT_CONFIG)
                ).rule_id
                == rule
            )

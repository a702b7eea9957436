"""Judging what a shell call changed, as a whole, before any of it reaches
the workspace. Pure: the changeset, the path denials, the tracked files and
the workspace path come in as arguments; nothing is read.

Per change, every rule that matches is kept and the strictest wins (deny >
ask > allow), the first such change in path order deciding:

- a write (create, modify, delete, mode change, link) to a path a denial
  covers: deny with that rule. Paths are also matched lower-cased, so
  `.ENV` or `.Git/hooks/x` cannot slip past rules written for `.env` and
  `.git` on a case-insensitive checkout;
- a symlink whose target leads out of the workspace (`symlink-escape`), a
  hard link (`hardlink`: it could alias a protected or hidden file), a
  device, FIFO or socket (`special-file`): deny;
- a name (or a symlink's target) that is not UTF-8 (`path-encoding`):
  deny, as no event can record it;
- a file given the set-user-ID or set-group-ID bit (`setid-bits`): deny.
  Applied by a root worker, it would be a program that runs as root for
  whoever starts it (a folder's set-group-ID, group inheritance, is allowed);
- a delete of a tracked file: ask, under rm's rule (`destructive-rm`);
- anything else: allow.
"""

from __future__ import annotations

import posixpath
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.guard.facts import LINK_ESCAPE
from orchestrator.guard.globs import glob_matcher
from orchestrator.sandbox.changeset import Change, Changeset, Kind

__all__ = [
    "PathDenial",
    "Verdict",
    "judge",
    "shell_denials",
    "link_escapes",
    "DELETE_RULE",
    "SETID_RULE",
    "ENCODING_RULE",
    "GIT_HOOKS",
    "GIT_CONFIG",
]

SETID_RULE = "setid-bits"
ENCODING_RULE = "path-encoding"
DELETE_RULE = "destructive-rm"  # the rule `rm` asks under: a delete needs the same confirmation
_RANK = {"allow": 0, "ask": 1, "deny": 2}


@dataclass(frozen=True)
class PathDenial:
    """A path rule that denies writing: its id, globs (relative to the
    workspace, as the policy writes them) and why."""

    rule_id: str
    globs: tuple[str, ...]
    reason: str = ""


@dataclass(frozen=True)
class Verdict:
    decision: Literal["allow", "ask", "deny"]
    rule_id: str | None = None
    reason: str = ""
    path: str | None = None


GIT_INTERNALS = "deny-git-internals-write"
GIT_HOOKS = PathDenial(
    "deny-git-hooks",
    (
        *(f"{top}.git/{d}hooks/**" for top in ("", "**/") for d in ("", "modules/**/")),
        *(f"!{top}.git/{d}hooks/*.sample" for top in ("", "**/") for d in ("", "modules/**/")),
    ),
    "a git hook runs code at the next git command (a submodule's hooks too)",
)
# git's configuration, wherever git reads one: a repository's, a nested
# repository's, a submodule's (under .git/modules/) and per-worktree ones. A
# key there can make the next git command run a program (core.fsmonitor,
# core.hooksPath, core.sshCommand, a filter or diff driver).
GIT_CONFIG = PathDenial(
    "deny-git-config",
    tuple(
        f"{top}.git/{where}"
        for top in ("", "**/")
        for where in (
            "config",
            "config.worktree",
            "modules/**/config",
            "modules/**/config.worktree",
            "worktrees/*/config.worktree",
        )
    ),
    "git's configuration can make the next git command run any program; change it "
    "outside the job (git config), not in a step",
)


def shell_denials(policy: Any) -> tuple[PathDenial, ...]:
    """What a shell changeset may not write, from a policy's path rules: every
    rule denying writes, except that git's own writes into `.git/` (a commit,
    a fetch) are allowed and only its hooks and configuration refused (either
    runs code at the next git command; git init's `*.sample` files run nothing)."""
    return (
        *(
            PathDenial(r.id, tuple(r.paths), r.reason)
            for r in policy.path_rules
            if r.decision == "deny" and r.access in ("write", "any") and r.id != GIT_INTERNALS
        ),
        GIT_HOOKS,
        GIT_CONFIG,
    )


ALLOW = Verdict("allow", None, "every change stays inside the workspace's path rules")


def judge(
    changeset: Changeset,
    denials: Sequence[PathDenial],
    tracked: Iterable[str] = (),
    workspace: str = "/",
) -> Verdict:
    """The verdict on the whole changeset (see the module's docstring)."""
    matchers = [(d, glob_matcher(d.globs, fold_case=True)) for d in denials]
    known = frozenset(tracked)
    worst = ALLOW
    for change in changeset.changes:
        for v in _verdicts(change, matchers, known, workspace):
            if _RANK[v.decision] > _RANK[worst.decision]:
                worst = v
    return worst


def _verdicts(
    c: Change,
    matchers: list[tuple[PathDenial, Callable[[str], bool]]],
    tracked: frozenset[str],
    workspace: str,
) -> list[Verdict]:
    out = []
    for denial, match in matchers:
        if match(c.path) or match(c.path.lower()):
            why = denial.reason or f"matched {denial.rule_id}"
            out.append(Verdict("deny", denial.rule_id, f"{_verb(c)} {c.path}: {why}", c.path))
    if c.kind is Kind.SYMLINK and link_escapes(c.path, c.target or "", workspace):
        out.append(
            Verdict(
                "deny",
                LINK_ESCAPE,
                f"the symlink {c.path} -> {c.target} leads out of the workspace",
                c.path,
            )
        )
    if c.kind is Kind.HARDLINK:
        out.append(
            Verdict(
                "deny",
                "hardlink",
                f"{c.path} is a hard link; it could alias a file the policy protects or hides",
                c.path,
            )
        )
    if c.kind is Kind.SPECIAL:
        out.append(
            Verdict(
                "deny",
                "special-file",
                f"{c.path} is a {c.detail or 'special file'}; only files, folders and "
                "symlinks may be made",
                c.path,
            )
        )
    if not _utf8(c.path) or not _utf8(c.target or ""):
        out.append(
            Verdict(
                "deny",
                ENCODING_RULE,
                f"{_verb(c)} {c.path!r}: the name (or the link's target) is not UTF-8, so "
                "the log and the patch cannot name it; give it a UTF-8 name in the step",
                c.path,
            )
        )
    if _setid(c):
        out.append(
            Verdict(
                "deny",
                SETID_RULE,
                f"{_verb(c)} {c.path} with mode {c.mode_after:o}: a set-user-ID or "
                "set-group-ID file runs as its owner for whoever starts it; clear the bit "
                "in the step (chmod u-s,g-s)",
                c.path,
            )
        )
    if c.kind is Kind.DELETED and c.path in tracked:
        out.append(Verdict("ask", DELETE_RULE, f"deletes the tracked file {c.path}", c.path))
    return out


def _utf8(name: str) -> bool:
    """Whether a name read from the disk is UTF-8 (os.fsdecode keeps other
    bytes as lone surrogates, which no JSON event can hold)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _setid(c: Change) -> bool:
    """Whether the change leaves set-user-ID on anything, or set-group-ID on
    anything but a folder (there it only passes the group on)."""
    mode = c.mode_after or 0
    return bool(mode & stat.S_ISUID or (mode & stat.S_ISGID and not c.is_dir))


def _verb(c: Change) -> str:
    return {
        Kind.CREATED: "create",
        Kind.MODIFIED: "write",
        Kind.DELETED: "delete",
        Kind.MODE: "change the mode of",
        Kind.SYMLINK: "make the symlink",
        Kind.HARDLINK: "make the hard link",
        Kind.SPECIAL: "make the special file",
        Kind.DIRECTORY: "make the folder",
    }[c.kind]


def link_escapes(path: str, target: str, workspace: str) -> bool:
    """Whether `target` of the symlink at `path` leads out, read lexically;
    a `..` after a name counts as out (the name may be a symlink). A target
    through another symlink is refused later by the jail when anything is
    read or written through it."""
    if not target:
        return True
    if target.startswith("/"):
        top = posixpath.normpath(workspace)
        full = posixpath.normpath(target)
        return top == "/" or not (full == top or full.startswith(top.rstrip("/") + "/"))
    parts = [p for p in target.split("/") if p not in ("", ".")]
    climbs = [i for i, p in enumerate(parts) if p == ".."]
    if climbs and any(p != ".." for p in parts[: climbs[-1]]):
        # `a/..` is not `.` when `a` is a symlink (`away/..` with `away`
        # leading out): where such a target leads cannot be read lexically.
        return True
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return joined == ".." or joined.startswith("../")

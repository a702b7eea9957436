"""What a rule is and when it matches: the decisions, the command and path
rule models, and matching one rule against a program's argv.

Pure: no I/O, no clock, no environment. The policy document
(`orchestrator.guard.policy`) holds rules; the built-in ones are data in
`orchestrator.guard.builtin_rules`; `orchestrator.guard.decision` applies them.
"""

from __future__ import annotations

import fnmatch
import posixpath
import shlex
from collections.abc import Iterable, Sequence
from enum import IntEnum
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict

from orchestrator.guard.globs import glob_matcher

TRUSTED_DIRS = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin")


class Decision(IntEnum):
    ALLOW = 0
    ASK = 1
    DENY = 2

    @property
    def word(self) -> DecisionWord:
        return _WORDS[self]


DecisionWord = Literal["allow", "ask", "deny"]
_WORDS: dict[Decision, DecisionWord] = {
    Decision.ALLOW: "allow",
    Decision.ASK: "ask",
    Decision.DENY: "deny",
}


class Frozen(BaseModel):
    """The policy document's models: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class CommandRule(Frozen):
    """`command` is the program and leading arguments, each an fnmatch pattern,
    matched as a prefix (`git diff` matches `git diff HEAD~1`). For git, the
    leading arguments are matched after git's own options (`-C dir`, `-c k=v`),
    which `with_global` matches instead. `with_any`: the rule only applies when
    some later argument matches one of these patterns (dangerous flags);
    `unless_any`: it does not apply when one matches (`cp -n`)."""

    id: str
    decision: DecisionWord
    command: str
    with_any: tuple[str, ...] = ()
    unless_any: tuple[str, ...] = ()
    with_global: tuple[str, ...] = ()
    destructive: bool = False
    network: bool = False
    reason: str = ""
    match: tuple[str, ...] = ()
    not_match: tuple[str, ...] = ()

    @cached_property
    def tokens(self) -> tuple[str, ...]:
        return tuple(shlex.split(self.command))

    @cached_property
    def path(self) -> str | None:
        """The program as a path when the rule names one (`.venv/bin/python`,
        `/opt/tool/bin/x`), normalized; a relative one is relative to the
        workspace. None when the rule names a program by name."""
        first = self.tokens[0]
        return posixpath.normpath(first) if "/" in first else None


class PathRule(Frozen):
    """Globs relative to the workspace (`**` spans folders, a pattern without a
    `/` matches the name at any depth). A deny or ask rule matches in any
    case (`.ENV` is `.env` on a case-insensitive mount); an allow rule only
    in the case it is written, so folding never widens what is allowed."""

    id: str
    decision: DecisionWord
    paths: tuple[str, ...]
    access: Literal["read", "write", "any"] = "any"
    reason: str = ""
    match: tuple[str, ...] = ()
    not_match: tuple[str, ...] = ()

    def matches(self, rel: str) -> bool:
        return glob_matcher(self.paths, fold_case=self.decision != "allow")(rel)


_GIT_GLOBAL_VALUE = frozenset(
    {
        "-C",
        "-c",
        "--git-dir",
        "--work-tree",
        "--namespace",
        "--config-env",
        "--super-prefix",
        "--exec-path",
    }
)


def _split_git(args: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """git's own options before the subcommand, and the rest."""
    i, globals_ = 0, []
    while i < len(args) and args[i].startswith("-"):
        a = args[i]
        globals_.append(a)
        if a in _GIT_GLOBAL_VALUE and i + 1 < len(args):
            globals_.append(args[i + 1])
            i += 2
        else:
            i += 1
    return tuple(globals_), tuple(args[i:])


def program_identity(program: str) -> str | None:
    """The name rules are written against, or None for a program that is not a
    trusted system binary (a path into the workspace or elsewhere)."""
    if "/" not in program:
        return program
    head, _, name = program.rpartition("/")
    return name if posixpath.normpath(head) in TRUSTED_DIRS else None


def program_path(program: str, cwd: str = ".") -> str:
    """A program run by path, as rules name it: absolute, or relative to the
    workspace root (`cwd` is relative to that root), normalized."""
    if program.startswith("/"):
        return posixpath.normpath(program)
    return posixpath.normpath(posixpath.join(cwd, program))


def _names_program(rule: CommandRule, program: str, cwd: str) -> bool:
    """A rule naming a path matches a program run by that path (trusted or
    not); a rule naming a name matches a trusted program of that name."""
    if rule.path is not None:
        return "/" in program and fnmatch.fnmatchcase(program_path(program, cwd), rule.path)
    name = program_identity(program)
    return name is not None and fnmatch.fnmatchcase(name, rule.tokens[0])


def rule_applies(rule: CommandRule, argv: Sequence[str], cwd: str = ".") -> bool:
    """Whether `rule` matches this argv (run from `cwd`, relative to the
    workspace): its program, leading arguments and flag conditions."""
    if not argv or not _names_program(rule, argv[0], cwd):
        return False
    name = program_identity(argv[0])
    args = tuple(argv[1:])
    globals_: tuple[str, ...] = ()
    if name == "git":
        globals_, args = _split_git(args)
    want = rule.tokens[1:]
    if len(args) < len(want) or not all(fnmatch.fnmatchcase(a, w) for a, w in zip(args, want)):
        return False
    if rule.with_global and not any(
        fnmatch.fnmatchcase(g, p) for g in globals_ for p in rule.with_global
    ):
        return False
    rest = args[len(want) :]
    if rule.with_any and not any(fnmatch.fnmatchcase(a, p) for a in rest for p in rule.with_any):
        return False
    return not any(fnmatch.fnmatchcase(a, p) for a in rest for p in rule.unless_any)


def example_problems(
    command_rules: Iterable[CommandRule], path_rules: Iterable[PathRule]
) -> list[str]:
    """Each rule's `match` examples that it does not match and `not_match`
    ones that it does: a broken rule fails when it loads, not in production."""
    problems = []
    for rule in command_rules:
        for ex in rule.match:
            if not rule_applies(rule, shlex.split(ex)):
                problems.append(
                    f"commands rule {rule.id}: example {ex!r} should match "
                    f"{rule.command!r} but does not"
                )
        for ex in rule.not_match:
            if rule_applies(rule, shlex.split(ex)):
                problems.append(
                    f"commands rule {rule.id}: example {ex!r} should not match "
                    f"{rule.command!r} but does"
                )
    for prule in path_rules:
        for ex in prule.match:
            if not prule.matches(ex):
                problems.append(
                    f"paths rule {prule.id}: example {ex!r} matches none of {list(prule.paths)}"
                )
        for ex in prule.not_match:
            if prule.matches(ex):
                problems.append(
                    f"paths rule {prule.id}: example {ex!r} should not match "
                    f"{list(prule.paths)} but does"
                )
    return problems

"""The shell analysis's vocabulary: what it reports (`Invocation`,
`Redirect`, `Refusal`, `Analysis`), what it gathers while it walks (`Acc`),
its caps, and the names it knows (shells, interpreters, variables that change
what runs). Pure data; `orchestrator.guard.commands` fills it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

MAX_DEPTH = 8  # wrappers and `sh -c` inside one another
MAX_NESTING = 48  # substitutions, strings and assignments inside one another
MAX_BYTES = 64 * 1024  # a longer line is refused unread (`too-long`)
SHELLS = frozenset(
    {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "busybox", "rbash", "tcsh", "csh"}
)
INTERPRETERS = frozenset(
    {
        "python",
        "python2",
        "python3",
        "perl",
        "ruby",
        "node",
        "nodejs",
        "php",
        "lua",
        "tclsh",
        "Rscript",
        "osascript",
        "deno",
        "bun",
    }
)
# Variables that change which program runs or what it loads.
DANGEROUS_ENV = re.compile(
    r"^(PATH|LD_\w+|BASH_ENV|ENV|BASH_FUNC_\w+.*|IFS|PS4|SHELLOPTS|"
    r"BASHOPTS|PROMPT_COMMAND|GIT_\w+|PYTHONPATH|PYTHONSTARTUP|"
    r"PYTHONHOME|PERL5LIB|PERL5OPT|RUBYOPT|RUBYLIB|NODE_OPTIONS|"
    r"DYLD_\w+|GCONV_PATH|HOSTALIASES|LESSOPEN|LESSCLOSE|PAGER|EDITOR|"
    r"VISUAL|GIT_SSH_COMMAND|PS0|PS1|PS2|PS3)$"
)
STORED_CODE = re.compile(r"\$\(|`|\$\{")
RESERVED = frozenset(
    {
        "{",
        "}",
        "(",
        ")",
        "!",
        "[[",
        "]]",
        "then",
        "fi",
        "do",
        "done",
        "esac",
        "elif",
        "else",
        "in",
        "function",
        "select",
        "until",
        "while",
        "if",
        "for",
        "case",
        "coproc",
    }
)


@dataclass(frozen=True)
class Invocation:
    """One program that would run. `argv[0]` is the name as written (a path
    when it has a `/`); `dynamic` marks arguments only known at run time."""

    argv: tuple[str, ...]
    via: tuple[str, ...] = ()  # wrappers it was unwrapped from, outermost first
    dynamic: frozenset[int] = frozenset()  # indexes of argv built at run time
    globbed: frozenset[int] = frozenset()  # indexes of argv with unquoted glob characters
    stdin: str = "inherit"  # inherit | pipe | heredoc | file
    env: tuple[str, ...] = ()  # NAME=... prefixes (names only)

    @property
    def program(self) -> str:
        return self.argv[0]

    @property
    def name(self) -> str:
        """The program's base name (what rules are written against)."""
        return self.argv[0].rsplit("/", 1)[-1]

    def text(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class Redirect:
    op: str  # > >> >| &> &>> < <> >& ...
    target: str | None  # None: built at run time
    fd: str | None = None

    @property
    def writes(self) -> bool:
        """Opens a file for writing (`2>&1` and `>&-` only move descriptors)."""
        if self.op in (">&", "<&"):
            return self.target is None or not (self.target.isdigit() or self.target == "-")
        return ">" in self.op or self.op == "<>"

    @property
    def truncates(self) -> bool:
        return self.op in (">", ">|", "&>", "<>")


@dataclass(frozen=True)
class Refusal:
    rule: str  # unparseable | dynamic-program | eval | code-from-stdin |
    # env-override | stored-code | too-deep | too-long | dynamic-shell-code |
    # arith-code | prompt-expansion | heredoc-code | startup-env
    detail: str


@dataclass(frozen=True)
class Analysis:
    command: str
    invocations: tuple[Invocation, ...] = ()
    redirects: tuple[Redirect, ...] = ()
    refusals: tuple[Refusal, ...] = ()


@dataclass
class Acc:
    invocations: list[Invocation] = field(default_factory=list)
    redirects: list[Redirect] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    level: int = 0  # how deep the walk is nested (substitutions in words)
    startup_shell: str = ""  # a shell that reads startup files, if any
    startup_vars: set[str] = field(default_factory=set)  # of STARTUP_VARS, set here

    def refuse(self, rule: str, detail: str) -> None:
        r = Refusal(rule, detail)
        if r not in self.refusals:
            self.refusals.append(r)

    def merge(self, other: Acc, *, unparseable: bool) -> None:
        self.invocations += other.invocations
        self.redirects += other.redirects
        for r in other.refusals:
            if unparseable or r.rule != "unparseable":
                self.refuse(r.rule, r.detail)
        self.startup_shell = self.startup_shell or other.startup_shell
        self.startup_vars |= other.startup_vars

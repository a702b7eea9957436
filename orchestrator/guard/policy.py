"""Permission decisions: pure functions from a request, a policy and the
session's usage to a `Verdict` with every rule that matched.

Like Codex's execpolicy, each rule that matches contributes a decision and
the strictest wins (`Decision.DENY > ASK > ALLOW`); the verdict keeps all
matches with their reasons, and a rule's `match`/`not_match` examples are
checked when the policy loads, so a broken rule fails at start.

The layers, in order (all are evaluated; the strictest decision wins):
1. tier: `read-only` < `read-write` < `exec`; a tool above the tier is denied;
2. quotas and rate limits, from the `QuotaUsage` projection and the time the
   caller passes in (never the clock);
3. paths: deny wins over allow; defaults deny secret-bearing paths and writes
   to `.git/`; leaving the workspace is destructive;
4. commands (shell): `orchestrator.guard.commands` finds every program that
   would run; anything it refuses is denied; each program is matched against
   the command rules (built-in ones first, then the policy's), programs no
   rule names get `commands.default`;
5. destructive operations are `ask` in every tier unless the session was
   elevated (`--allow-destructive`), which turns exactly those asks into allows.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from orchestrator.errors import UserError
from orchestrator.guard.commands import Analysis, Invocation, analyze, analyze_argv
from orchestrator.sandbox.limits import SandboxLimits as Limits  # one definition: the sandbox's
from orchestrator.tools.paths import glob_matcher

Tier = Literal["read-only", "read-write", "exec"]
TIERS: tuple[Tier, ...] = ("read-only", "read-write", "exec")
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

# The tier each tool needs.
TOOL_TIER: dict[str, Tier] = {
    "search": "read-only",
    "read": "read-only",
    "list": "read-only",
    "fetch": "read-only",
    "replace": "read-write",
    "write": "read-write",
    "patch": "read-write",
    "delete": "read-write",
    "shell": "exec",
    # Network tools change nothing in the workspace; `network.enabled` and the
    # egress rules are what hold them (docs/network.md).
    "web_search": "read-only",
    "browser": "read-only",
}
NETWORK_TOOLS = frozenset({"fetch", "web_search", "browser"})


class PolicyError(UserError):
    """A policy file that does not load; lists every problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"policy {source} is invalid ({len(problems)} problem"
            f"{'s' if len(problems) != 1 else ''}):\n{lines}"
        )
        self.problems = problems


# -- the policy document -----------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CommandRule(_Model):
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


class PathRule(_Model):
    """Globs relative to the workspace (`**` spans folders, a pattern without a
    `/` matches the name at any depth)."""

    id: str
    decision: DecisionWord
    paths: tuple[str, ...]
    access: Literal["read", "write", "any"] = "any"
    reason: str = ""
    match: tuple[str, ...] = ()
    not_match: tuple[str, ...] = ()


class Commands(_Model):
    default: DecisionWord = "ask"
    rules: tuple[CommandRule, ...] = ()


class Network(_Model):
    """`allow_hosts` empty means any host. The network tools hold a request to
    the lists; a shell command cannot be held to them (the sandbox gives a
    process the whole network or none), so a host list keeps shell commands
    off the network altogether rather than letting them reach everything.

    Entries are host patterns (`example.com`, `*.example.com`, `*`),
    addresses or CIDRs, each with an optional `:port`. `deny_hosts` wins over
    everything. Private, loopback, link-local and metadata addresses are
    refused to the network tools unless `allow_private` names them (a CIDR,
    an address, or a host whose addresses it allows); docs/network.md."""

    enabled: bool = False
    allow_hosts: tuple[str, ...] = ()
    deny_hosts: tuple[str, ...] = ()
    allow_private: tuple[str, ...] = ()

    @field_validator("allow_hosts", "deny_hosts", "allow_private")
    @classmethod
    def _host_entries(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from orchestrator.guard.egress import host_rule

        for entry in v:
            host_rule(entry)  # ValueError names what is wrong with the entry
        return v

    @property
    def for_shell(self) -> bool:
        return self.enabled and not self.allow_hosts and not self.deny_hosts


class SessionLimits(_Model):
    """Per session, decided from the QuotaUsage projection (None: no limit)."""

    tool_calls: dict[str, int] = {}
    cpu_s: float | None = None
    wall_s: float | None = None
    bytes_written: int | None = None
    files_changed: int | None = None
    tokens: int | None = None  # model tokens in + out (the agent's budget is the smaller)


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(second|minute|hour|s|m|h)\s*$")
_UNIT_S = {"second": 1, "s": 1, "minute": 60, "m": 60, "hour": 3600, "h": 3600}


def parse_rate(text: str) -> tuple[int, float]:
    """`"30/minute"` -> (30, 60.0); `"5/10s"` -> (5, 10.0)."""
    m = _RATE.match(text)
    if not m:
        raise ValueError(f"rate {text!r} is not COUNT/UNIT (e.g. '30/minute', '5/10s')")
    return int(m.group(1)), float(int(m.group(2) or 1) * _UNIT_S[m.group(3)])


class PolicyDoc(_Model):
    """What a policy YAML file holds (docs/policy.md documents every field)."""

    version: Literal[1] = 1
    name: str = "custom"
    tier: Tier = "exec"
    allow_destructive: bool = False
    commands: Commands = Commands()
    paths: tuple[PathRule, ...] = ()
    network: Network = Network()
    limits: Limits = Limits()
    session_limits: SessionLimits = SessionLimits()
    rate_limits: dict[str, str] = {}

    @field_validator("rate_limits")
    @classmethod
    def _rates(cls, v: dict[str, str]) -> dict[str, str]:
        for text in v.values():
            parse_rate(text)
        return v

    @model_validator(mode="after")
    def _examples_hold(self) -> PolicyDoc:
        # A broken rule fails when the policy loads (job spec or file), not in
        # production. Policy is defined below; this runs only on validation.
        problems = check_examples(Policy(self.name, self))
        if problems:
            raise ValueError("; ".join(problems))
        return self


# -- built-in rules (before the policy's own; deny wins, so they cannot be undone
#    by an allow, only by not matching) -------------------------------------------


def _c(
    id: str,
    decision: DecisionWord,
    command: str,
    reason: str,
    *,
    with_any: tuple[str, ...] = (),
    unless_any: tuple[str, ...] = (),
    with_global: tuple[str, ...] = (),
    destructive: bool = False,
    network: bool = False,
    match: tuple[str, ...] = (),
    not_match: tuple[str, ...] = (),
) -> CommandRule:
    return CommandRule(
        id=id,
        decision=decision,
        command=command,
        reason=reason,
        with_any=with_any,
        unless_any=unless_any,
        with_global=with_global,
        destructive=destructive,
        network=network,
        match=match,
        not_match=not_match,
    )


_READ_TOOLS = (
    "ls",
    "cat",
    "head",
    "tail",
    "wc",
    "grep",
    "egrep",
    "fgrep",
    "rg",
    "sort",
    "uniq",
    "cut",
    "tr",
    "diff",
    "cmp",
    "comm",
    "echo",
    "printf",
    "true",
    "false",
    "test",
    "[",
    "pwd",
    "cd",
    "basename",
    "dirname",
    "realpath",
    "readlink",
    "stat",
    "file",
    "du",
    "tree",
    "which",
    "type",
    "date",
    "sleep",
    "seq",
    "nl",
    "column",
    "jq",
    "yq",
    "sha256sum",
    "sha1sum",
    "md5sum",
    "base64",
    "od",
    "xxd",
    "hexdump",
    "strings",
    "less",
    "more",
    "awk",
    "gawk",
    "mawk",
    "sed",
    "find",
    "xargs",
    "env",
    "nice",
    "nohup",
    "timeout",
    "time",
    "stdbuf",
    "ionice",
    "command",
    "builtin",
    "exec",
    "tee",
    "touch",
    "mkdir",
    "cp",
    "mv",
    "ln",
    "patch",
    "tar",
    "gzip",
    "gunzip",
    "zcat",
    "bzip2",
    "xz",
    "unzip",
    "zip",
    "sh",
    "bash",
    "dash",
    "export",
    "set",
    "unset",
    "local",
    "read",
    "wait",
    "exit",
    "return",
    "shift",
    ":",
    "source",
    ".",
    "trap",
    "umask",
    "getopts",
    "declare",
    "typeset",
    "readonly",
    "let",
    "printenv",
    "id",
    "whoami",
    "chmod",
    "uname",
    "hostname",
    "nproc",
    "tput",
    "dirs",
    "pushd",
    "popd",
    "hash",
)
_DEV_TOOLS = (
    "python",
    "python3",
    "pytest",
    "py.test",
    "ruff",
    "mypy",
    "black",
    "isort",
    "flake8",
    "pylint",
    "pyright",
    "tox",
    "nox",
    "coverage",
    "make",
    "cmake",
    "cargo",
    "rustc",
    "go",
    "gofmt",
    "node",
    "npx",
    "tsc",
    "eslint",
    "prettier",
    "javac",
    "java",
    "mvn",
    "gradle",
    "gcc",
    "cc",
    "clang",
    "g++",
    "ld",
    "ar",
)

BUILTIN_COMMAND_RULES: tuple[CommandRule, ...] = (
    *(
        _c(f"allow-{n}", "allow", n, f"{n} is an ordinary development tool")
        for n in (*_READ_TOOLS, *_DEV_TOOLS)
    ),
    _c(
        "allow-git",
        "allow",
        "git",
        "git works on the local repository (the rules below "
        "single out what runs programs, publishes or discards work)",
        match=("git status",),
    ),
    *(
        _c(f"net-git-{s}", "allow", f"git {s}", f"git {s} talks to a remote", network=True)
        for s in ("fetch", "pull", "clone", "ls-remote")
    ),
    # -- privilege, code from the network, shell tricks --------------------------------
    *(
        _c(
            f"deny-{n}",
            "deny",
            n,
            f"{n} changes privileges; agents never get more rights than their sandbox",
        )
        for n in (
            "sudo",
            "su",
            "doas",
            "pkexec",
            "setpriv",
            "chroot",
            "nsenter",
            "unshare",
            "capsh",
            "runuser",
        )
    ),
    *(
        _c(f"net-{n}", "allow", n, f"{n} talks to the network", network=True)
        for n in (
            "curl",
            "wget",
            "nc",
            "ncat",
            "netcat",
            "socat",
            "ssh",
            "scp",
            "sftp",
            "rsync",
            "telnet",
            "ftp",
            "pip",
            "pip3",
            "npm",
            "yarn",
            "pnpm",
            "uv",
        )
    ),
    *(
        _c(
            f"deny-{n}",
            "deny",
            n,
            f"{n} can start arbitrary programs or daemons behind the policy's back",
        )
        for n in (
            "crontab",
            "at",
            "batch",
            "systemctl",
            "service",
            "systemd-run",
            "screen",
            "tmux",
            "disown",
            "mount",
            "umount",
            "insmod",
            "modprobe",
            "kill",
            "pkill",
            "killall",
            "shutdown",
            "reboot",
        )
    ),
    # -- dangerous flags on allowed programs --------------------------------------------
    _c(
        "find-writes",
        "deny",
        "find",
        "find -fprint/-fls write files the policy cannot see",
        with_any=("-fprint", "-fprint0", "-fprintf", "-fls"),
        match=("find . -fprint /tmp/x",),
        not_match=("find . -print",),
    ),
    _c(
        "sort-compress-program",
        "deny",
        "sort",
        "sort --compress-program runs a program",
        with_any=("--compress-program*",),
        match=("sort --compress-program=sh x",),
    ),
    _c(
        "rg-pre",
        "deny",
        "rg",
        "rg --pre runs a program on every file",
        with_any=("--pre", "--pre=*", "--pre-glob*"),
        match=("rg --pre ./x foo",),
        not_match=("rg -n foo",),
    ),
    _c(
        "git-config-override",
        "deny",
        "git",
        "git -c / --exec-path / --config-env can make git run any program (aliases, pagers, hooks)",
        with_global=("-c", "-c*", "--config-env*", "--exec-path*"),
        match=("git -c core.pager=sh log", "git -c alias.x=!sh x"),
        not_match=("git grep -c foo", "git commit -m x"),
    ),
    _c(
        "git-output",
        "deny",
        "git",
        "git --output writes a file anywhere",
        with_any=("--output", "--output=*", "-o"),
        match=("git diff --output=/etc/x",),
        not_match=("git diff",),
    ),
    _c(
        "git-upload-pack",
        "deny",
        "git",
        "git --upload-pack/--receive-pack/--exec run programs",
        with_any=("--upload-pack*", "--receive-pack*", "--exec=*", "-u"),
    ),
    _c(
        "git-config-write",
        "deny",
        "git config",
        "git config can install aliases, hooks "
        "and pagers that run programs; read it with --get or --list",
        unless_any=("--get*", "--list", "-l", "--show-origin"),
        match=("git config alias.x '!rm -rf /'",),
        not_match=("git config --get user.name", "git config --list"),
    ),
    _c(
        "tar-runs-programs",
        "deny",
        "tar",
        "tar can run programs (--to-command, -I, "
        "--use-compress-program, --checkpoint-action, --info-script)",
        with_any=(
            "--to-command*",
            "--use-compress-program*",
            "-I",
            "--checkpoint-action*",
            "--info-script*",
            "--new-volume-script*",
            "-F",
        ),
        match=("tar -xf a.tar --to-command=sh",),
        not_match=("tar -xf a.tar",),
    ),
    _c(
        "zip-runs-programs",
        "deny",
        "zip",
        "zip -TT/--unzip-command runs a program",
        with_any=("-TT", "--unzip-command*"),
    ),
    _c(
        "rsync-shell",
        "deny",
        "rsync",
        "rsync -e/--rsh runs a program",
        with_any=("-e", "--rsh*", "--rsync-path*"),
    ),
    _c(
        "less-shell",
        "deny",
        "less",
        "less with LESSOPEN or -k can run programs",
        with_any=("-k*", "--lesskey*"),
    ),
    # -- destructive: ask in every tier unless elevated ----------------------------------
    *(
        _c(f"destructive-{n}", "ask", n, f"{n} deletes or overwrites data", destructive=True)
        for n in ("rm", "rmdir", "shred", "truncate", "dd", "unlink", "mv")
    ),
    _c(
        "destructive-cp",
        "ask",
        "cp",
        "cp overwrites existing files (use -n to refuse that)",
        destructive=True,
        unless_any=("-n", "--no-clobber", "--update=none", "-*n*"),
        match=("cp a b",),
        not_match=("cp -n a b", "cp --no-clobber a b"),
    ),
    _c(
        "destructive-sed-i",
        "ask",
        "sed",
        "sed -i overwrites files outside a patch",
        with_any=("-i*", "--in-place*"),
        destructive=True,
        match=("sed -i s/a/b/ f",),
        not_match=("sed s/a/b/ f",),
    ),
    _c(
        "destructive-perl-i",
        "ask",
        "perl",
        "perl -i overwrites files outside a patch",
        with_any=("-i*", "-pi*", "-*i"),
        destructive=True,
    ),
    _c(
        "destructive-find-delete",
        "ask",
        "find",
        "find -delete deletes files",
        with_any=("-delete",),
        destructive=True,
        match=("find . -name x -delete",),
    ),
    *(
        _c(
            f"destructive-{n}-r",
            "ask",
            n,
            f"{n} -R changes a whole tree",
            destructive=True,
            with_any=("-R", "--recursive", "-*R*"),
        )
        for n in ("chmod", "chown", "chgrp")
    ),
    _c(
        "destructive-git-push-force",
        "ask",
        "git push",
        "force-pushing rewrites shared history",
        with_any=(
            "-f",
            "--force",
            "--force-with-lease*",
            "--force-if-includes",
            "+*",
            "--delete",
            "-d",
            "--mirror",
            "--prune",
        ),
        destructive=True,
        network=True,
        match=("git push --force origin main", "git push origin +main"),
        not_match=("git push origin main",),
    ),
    _c(
        "git-push",
        "ask",
        "git push",
        "pushing publishes commits outside the workspace",
        network=True,
        match=("git push origin main",),
    ),
    _c(
        "destructive-git-reset-hard",
        "ask",
        "git reset",
        "git reset --hard discards work",
        with_any=("--hard", "--merge", "--keep"),
        destructive=True,
        match=("git reset --hard HEAD~1",),
        not_match=("git reset HEAD file",),
    ),
    _c(
        "destructive-git-clean",
        "ask",
        "git clean",
        "git clean deletes untracked files",
        destructive=True,
    ),
    _c(
        "destructive-git-checkout",
        "ask",
        "git checkout",
        "git checkout -- PATH / . / -f discards changes",
        with_any=("--", ".", "-f", "--force", "-B"),
        destructive=True,
        match=("git checkout -- .",),
        not_match=("git checkout -b topic",),
    ),
    _c(
        "destructive-git-restore",
        "ask",
        "git restore",
        "git restore discards changes",
        destructive=True,
    ),
    _c(
        "destructive-git-branch-delete",
        "ask",
        "git branch",
        "deleting a branch loses commits",
        with_any=("-D", "-d", "--delete", "-M", "-f", "--force"),
        destructive=True,
    ),
    _c(
        "destructive-git-stash-drop",
        "ask",
        "git stash",
        "dropping a stash loses work",
        with_any=("drop", "clear"),
        destructive=True,
    ),
    *(
        _c(f"destructive-git-{s}", "ask", f"git {s}", f"git {s} rewrites history", destructive=True)
        for s in ("rebase", "filter-branch", "filter-repo", "gc", "prune", "update-ref", "replace")
    ),
)

_SECRET_PATHS = (
    ".env",
    ".env.*",
    "**/.env",
    "**/.env.*",
    "**/.ssh/**",
    ".ssh/**",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_ed25519*",
    "id_ecdsa*",
    "**/.aws/credentials",
    "**/.aws/config",
    ".aws/**",
    "**/.config/gcloud/**",
    ".config/gcloud/**",
    "**/.azure/**",
    ".azure/**",
    "**/.kube/config",
    ".kube/**",
    ".netrc",
    "**/.netrc",
    ".pypirc",
    "**/.pypirc",
    ".npmrc",
    "**/.npmrc",
    "**/.docker/config.json",
    ".docker/**",
    ".git/config",
    "**/.git/config",
    ".git-credentials",
    "**/.git-credentials",
    "*.p12",
    "*.pfx",
    "*.keystore",
    "*.jks",
    "credentials.json",
    "service-account*.json",
    "*.tfstate",
    "*.tfstate.*",
    ".vault-token",
    "**/secrets/**",
    "secrets/**",
)

BUILTIN_PATH_RULES: tuple[PathRule, ...] = (
    PathRule(
        id="deny-secrets",
        decision="deny",
        paths=_SECRET_PATHS,
        access="any",
        reason="the file holds credentials or keys",
        match=(
            ".env",
            ".env.production",
            "config/.env",
            "deploy/key.pem",
            ".ssh/id_rsa",
            "home/.aws/credentials",
            ".git/config",
            ".netrc",
        ),
        not_match=("src/env.py", "environment.md", "README.md", ".envrc.md.txt/x.py"),
    ),
    PathRule(
        id="deny-git-internals-write",
        decision="deny",
        paths=(".git", ".git/**", "**/.git/**"),
        access="write",
        reason="writing into .git/ can install hooks and rewrite history; use git commands instead",
        match=(".git/hooks/pre-commit", "sub/.git/HEAD"),
        not_match=(".gitignore", ".github/workflows/ci.yml"),
    ),
)


# -- requests and verdicts ------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    rule_id: str
    decision: Decision
    reason: str
    destructive: bool = False


@dataclass(frozen=True)
class Verdict:
    """The outcome and every rule that contributed; `rule_id` is the deciding one."""

    decision: str  # allow | deny | ask (as recorded in PermissionDecided)
    rule_id: str
    reason: str
    matches: tuple[Match, ...] = ()
    retry_after_s: float | None = None  # rate limits: when a retry would be allowed

    @property
    def level(self) -> Decision:
        return Decision[self.decision.upper()]


@dataclass(frozen=True)
class Usage:
    """What quotas and rate limits need, taken from the QuotaUsage projection."""

    tool_calls: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    bytes_written: int = 0
    files_changed: int = 0
    recent: dict[str, tuple[datetime, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """A loaded, checked policy. `hash` identifies it in PermissionDecided events
    (it covers the built-in rules, so a release that changes them changes it)."""

    name: str
    doc: PolicyDoc

    @property
    def document(self) -> dict[str, Any]:
        return self.doc.model_dump(mode="json")

    @cached_property
    def hash(self) -> str:
        data = {"doc": self.document, "builtin": _builtin_digest()}
        return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()

    @cached_property
    def command_rules(self) -> tuple[CommandRule, ...]:
        return (*BUILTIN_COMMAND_RULES, *self.doc.commands.rules)

    @cached_property
    def path_rules(self) -> tuple[PathRule, ...]:
        return (*BUILTIN_PATH_RULES, *self.doc.paths)

    @cached_property
    def _by_program(self) -> dict[str, tuple[CommandRule, ...]]:
        return {}

    def rules_for(self, name: str) -> tuple[CommandRule, ...]:
        """The command rules that can apply to program `name`, in policy order
        (rules are indexed by their literal program; wildcard ones always apply)."""
        rules = self._by_program.get(name)
        if rules is None:
            rules = self._by_program[name] = tuple(
                r
                for r in self.command_rules
                if r.tokens[0] == name or any(ch in r.tokens[0] for ch in "*?[")
            )
        return rules


@lru_cache(maxsize=1)
def _builtin_digest() -> str:
    """The built-in rules' digest: part of every policy's hash."""
    rules = [r.model_dump(mode="json") for r in (*BUILTIN_COMMAND_RULES, *BUILTIN_PATH_RULES)]
    return hashlib.sha256(orjson.dumps(rules, option=orjson.OPT_SORT_KEYS)).hexdigest()


def strictest_tier(*tiers: Tier | None) -> Tier:
    """The lowest of the tiers that are set (job, session, CLI flag, config)."""
    chosen = [t for t in tiers if t is not None]
    return min(chosen, key=TIERS.index) if chosen else "exec"


def _verdict(matches: list[Match], elevated: bool, retry_after: float | None = None) -> Verdict:
    final = []
    for m in matches:
        if elevated and m.destructive and m.decision == Decision.ASK:
            m = Match(
                m.rule_id,
                Decision.ALLOW,
                m.reason + " (allowed: session elevated with --allow-destructive)",
                destructive=True,
            )
        final.append(m)
    # Among equally strict matches the first decides, except that an elevated
    # (destructive) one goes first: the ledger then shows what elevation allowed.
    worst = max(final, key=lambda m: (m.decision, m.destructive))
    return Verdict(
        worst.decision.word,
        worst.rule_id,
        worst.reason,
        tuple(final),
        retry_after if worst.decision == Decision.DENY else None,
    )


def decide_request(
    tool: str,
    policy: Policy,
    *,
    command: str | None = None,
    argv: Sequence[str] | None = None,
    paths: Iterable[tuple[str, str]] = (),
    tier: Tier | None = None,
    usage: Usage | None = None,
    now: datetime | None = None,
    elevated: bool = False,
    cwd: str = ".",
    url: str | None = None,
) -> Verdict:
    """Decide one tool request. `paths` are (access, path relative to the
    workspace) pairs the tool will touch; `command` (a bash line) or `argv`
    for the shell tool; `cwd` is relative to the workspace; `url` the
    address a network tool requests (its egress rules, from the URL alone:
    the tool checks the resolved addresses again when it connects)."""
    elevated = elevated or policy.doc.allow_destructive
    matches: list[Match] = []
    effective = strictest_tier(policy.doc.tier, tier)
    needed = TOOL_TIER.get(tool)
    if needed is None:
        matches.append(Match("unknown-tool", Decision.DENY, f"no tool named {tool!r}"))
    elif TIERS.index(needed) > TIERS.index(effective):
        matches.append(
            Match(
                "tier",
                Decision.DENY,
                (
                    f"tool {tool} needs tier {needed} but the session runs at tier {effective}; "
                    f"raise it with --tier {needed} (or `tier: {needed}` in the policy and job)"
                ),
            )
        )
    retry_after = None
    if usage is not None:
        quota, retry_after = _quota_matches(tool, policy, usage, now)
        matches += quota
    for access, path in paths:
        matches += path_matches(policy, access, path, cwd=cwd)
    if tool == "delete":
        matches.append(
            Match("destructive-delete", Decision.ASK, "deleting a file", destructive=True)
        )
    if tool == "shell":
        analysis = analyze(command) if command is not None else analyze_argv(argv or ())
        matches += command_matches(policy, analysis, cwd=cwd)
    if tool in NETWORK_TOOLS:
        matches += network_matches(policy, url)
    if not matches:
        matches.append(
            Match(f"tier-{effective}", Decision.ALLOW, f"{tool} is allowed at tier {effective}")
        )
    return _verdict(matches, elevated, retry_after)


def _quota_matches(
    tool: str, policy: Policy, usage: Usage, now: datetime | None
) -> tuple[list[Match], float | None]:
    out: list[Match] = []
    lim = policy.doc.session_limits
    cap = lim.tool_calls.get(tool)
    used = usage.tool_calls.get(tool, 0)
    if cap is not None and used >= cap:
        out.append(
            Match(
                f"quota:tool_calls:{tool}",
                Decision.DENY,
                f"the session has used {used} of its {cap} {tool} calls; raise "
                f"session_limits.tool_calls.{tool} in the policy",
            )
        )
    for name, limit, value in (
        ("cpu_s", lim.cpu_s, usage.cpu_s),
        ("wall_s", lim.wall_s, usage.wall_s),
        ("bytes_written", lim.bytes_written, usage.bytes_written),
        ("files_changed", lim.files_changed, usage.files_changed),
    ):
        if limit is not None and value >= limit:
            out.append(
                Match(
                    f"quota:{name}",
                    Decision.DENY,
                    f"the session has used {value:g} of its {name} quota of "
                    f"{limit:g}; raise session_limits.{name} in the policy",
                )
            )
    rate = policy.doc.rate_limits.get(tool)
    retry_after = None
    if rate is not None and now is not None:
        count, window = parse_rate(rate)
        since = now - timedelta(seconds=window)
        recent = sorted(t for t in usage.recent.get(tool, ()) if t > since)
        if len(recent) >= count:
            oldest = recent[len(recent) - count]
            retry_after = max(0.0, (oldest + timedelta(seconds=window) - now).total_seconds())
            out.append(
                Match(
                    f"rate:{tool}",
                    Decision.DENY,
                    f"{len(recent)} {tool} calls in the last {window:g} s reach the "
                    f"rate limit {rate}; retry in {retry_after:.1f} s or raise "
                    f"rate_limits.{tool} in the policy",
                )
            )
    return out, retry_after


def network_matches(policy: Policy, url: str | None) -> list[Match]:
    """A network tool's request: the session's network must be on, and the
    URL (when the request names one) pass the egress rules."""
    from orchestrator.guard.egress import EgressDenied, check_url

    net = policy.doc.network
    if not net.enabled:
        return [
            Match(
                "egress-network-off",
                Decision.DENY,
                "network tools need the "
                "session's network; enable it with `network: {enabled: true}` in the "
                "policy",
            )
        ]
    if url is None:
        return []
    try:
        check_url(url, net, secrets=())
    except EgressDenied as exc:
        return [Match(exc.rule_id, Decision.DENY, f"{exc.target}: {exc.reason}")]
    return [
        Match(
            "egress-allowed",
            Decision.ALLOW,
            f"{url} passes the egress rules (its "
            "addresses are checked again when the tool connects)",
        )
    ]


# -- paths ------------------------------------------------------------------------------


def normalize(path: str, cwd: str = ".") -> str | None:
    """`path` as a clean path relative to the workspace root, or None when it
    leaves the workspace (absolute, `~`, or `..` past the root)."""
    if path.startswith("~") or "\x00" in path:
        return None
    if path.startswith("/"):
        return None
    joined = posixpath.normpath(posixpath.join(cwd, path))
    if joined == ".." or joined.startswith("../") or joined.startswith("/"):
        return None
    return joined


def path_matches(policy: Policy, access: str, path: str, *, cwd: str = ".") -> list[Match]:
    rel = normalize(path, cwd)
    if rel is None:
        if access == "write":
            return [
                Match(
                    "outside-workspace",
                    Decision.ASK,
                    f"writing {path!r}, outside the workspace",
                    destructive=True,
                )
            ]
        return [
            Match(
                "outside-workspace",
                Decision.DENY,
                f"{path!r} is outside the workspace; tools only read inside it",
            )
        ]
    out = []
    for rule in policy.path_rules:
        if rule.access not in ("any", access):
            continue
        if glob_matcher(rule.paths)(rel):
            out.append(
                Match(
                    rule.id,
                    Decision[rule.decision.upper()],
                    f"{access} {rel}: {rule.reason or 'matched ' + rule.id}",
                )
            )
    return out


def _secret_matches(policy: Policy, value: str, cwd: str) -> list[Match]:
    """Deny rules for a path named anywhere (in the workspace or out of it:
    `~/.ssh/id_rsa` is as secret as `.ssh/id_rsa`)."""
    rel = normalize(value, cwd)
    if rel is None:
        rel = posixpath.normpath(value.lstrip("~").lstrip("/")).lstrip("./") or "."
    return [m for m in path_matches(policy, "read", rel) if m.decision == Decision.DENY]


def visible(policy: Policy, rel: str, access: str = "read") -> bool:
    """Whether a globbing tool (search, replace) may see this file at all."""
    return not any(m.decision == Decision.DENY for m in path_matches(policy, access, rel))


# -- commands -----------------------------------------------------------------------------

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


def rule_applies(rule: CommandRule, argv: Sequence[str]) -> bool:
    if not argv:
        return False
    name = program_identity(argv[0])
    if name is None or not fnmatch.fnmatchcase(name, rule.tokens[0]):
        return False
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


# One sed address: a line number (with ~step), $, /regex/ or \cregexc (with
# I/M flags); a range adds another address or +N/~N; then an optional !.
def _sed_address(g: str) -> str:
    return (
        rf"(?:\d+(?:~\d+)?|\$|/(?:\\.|[^/\\\n])*/[IM]*|"
        rf"\\(?P<{g}>\S)(?:\\.|(?!(?P={g})).)*?(?P={g})[IM]*)"
    )


_SED_ADDRESS = re.compile(
    rf"\s*(?:{_sed_address('a')}(?:\s*,\s*(?:{_sed_address('b')}|[+~]\d+))?)?\s*!?\s*", re.S
)
# The s command's flags with w (write) or e (execute); the filename of w may
# follow with or without a space (GNU sed takes `s/a/b/wout`).
_SED_S_FLAGS = re.compile(r"s(.)(?:\\.|(?!\1).)*\1(?:\\.|(?!\1).)*\1[gpiImM0-9]*[ew]", re.S)


def _sed_runs_or_writes(script: str) -> bool:
    """Whether a sed script has an e, w or W command, or an s command with the
    w or e flag. Commands are split on ; newline { and }: a split inside a
    regex or a replacement can only find more, so this errs on denying.
    GNU sed takes w's filename straight after it (`1w/tmp/x`), so no space
    is needed after the letter."""
    if _SED_S_FLAGS.search(script):
        return True
    for part in re.split(r"[;\n{}]", script):
        m = _SED_ADDRESS.match(part)
        rest = part[m.end() :] if m else part.lstrip()
        if rest[:1] in ("e", "w", "W"):
            return True
    return False


_AWK_EXEC = re.compile(r"system\s*\(|\|\s*getline|print[^;]*\|\s*\"|\|&")
_WRITERS = frozenset(
    {
        "rm",
        "rmdir",
        "mv",
        "cp",
        "tee",
        "touch",
        "mkdir",
        "ln",
        "truncate",
        "shred",
        "chmod",
        "chown",
        "chgrp",
        "install",
        "unlink",
        "dd",
        "patch",
    }
)


def command_matches(policy: Policy, analysis: Analysis, *, cwd: str = ".") -> list[Match]:
    out = [Match(f"shell:{r.rule}", Decision.DENY, r.detail) for r in analysis.refusals]
    for inv in analysis.invocations:
        out += _invocation_matches(policy, inv, cwd)
    for r in analysis.redirects:
        if not r.writes:
            if r.op == "<" and r.target is not None:
                out += path_matches(policy, "read", r.target, cwd=cwd)
            continue
        if r.target is None:
            out.append(
                Match(
                    "shell:dynamic-redirect",
                    Decision.DENY,
                    "a redirect whose target is only known at run time; name the file literally",
                )
            )
        elif r.target in ("/dev/null", "/dev/stdout", "/dev/stderr"):
            continue
        else:
            out += path_matches(policy, "write", r.target, cwd=cwd)
            if r.truncates:
                out.append(
                    Match(
                        "destructive-truncating-redirect",
                        Decision.ASK,
                        f"`{r.op} {r.target}` truncates the file if it exists "
                        "(use `>>`, or a write step)",
                        destructive=True,
                    )
                )
    return out


def _invocation_matches(policy: Policy, inv: Invocation, cwd: str) -> list[Match]:
    out: list[Match] = []
    name = program_identity(inv.program)
    shown = inv.text()
    if name is None:
        out.append(
            Match(
                "untrusted-program",
                Decision.ASK,
                (
                    f"`{inv.program}` is not a system program (trusted: {', '.join(TRUSTED_DIRS)}); "
                    "a binary in the workspace is not the tool it is named after. Allow it with a "
                    f"command rule for {inv.program!r}"
                ),
            )
        )
    named = False
    for rule in policy.rules_for(name or ""):
        if not rule_applies(rule, inv.argv):
            continue
        named = True
        if rule.network and not policy.doc.network.enabled:
            out.append(
                Match(
                    "network-off",
                    Decision.DENY,
                    (
                        f"`{shown}`: {rule.reason}, and the session's network is off; enable it "
                        "with `network: {enabled: true}` in the policy"
                    ),
                )
            )
        elif rule.network and not policy.doc.network.for_shell:
            out.append(
                Match(
                    "network-hosts-shell",
                    Decision.DENY,
                    (
                        f"`{shown}`: {rule.reason}, and the policy limits the network to "
                        f"{', '.join(policy.doc.network.allow_hosts)}, which the sandbox cannot hold "
                        "a shell command to (it gets the whole network or none); remove "
                        "`network.allow_hosts` to let shell commands reach any host"
                    ),
                )
            )
        out.append(
            Match(
                rule.id,
                Decision[rule.decision.upper()],
                f"`{shown}`: {rule.reason or 'matched ' + rule.id}",
                destructive=rule.destructive,
            )
        )
    if not named and name is not None:
        d = Decision[policy.doc.commands.default.upper()]
        out.append(
            Match(
                "commands-default",
                d,
                (
                    f"`{inv.name}` is named by no command rule; the policy's commands.default is "
                    f"{d.word}. Add a rule for it to decide otherwise"
                ),
            )
        )
    if inv.name in ("sed", "gsed") and (
        any(_sed_runs_or_writes(a) for a in _sed_scripts(inv)) or _sed_reads_script(inv)
    ):
        out.append(
            Match(
                "sed-exec",
                Decision.DENY,
                "a sed script with the e (execute) or w "
                "(write file) command, or a script read from a file (-f), runs "
                "programs or writes files the policy cannot see",
            )
        )
    if inv.name in ("awk", "gawk", "mawk", "nawk") and any(
        _AWK_EXEC.search(a) for a in inv.argv[1:]
    ):
        out.append(
            Match(
                "awk-exec",
                Decision.DENY,
                "an awk program that calls system() or "
                "pipes to a command runs programs the policy cannot see",
            )
        )
    # Arguments that name files: secrets are denied, leaving the workspace to
    # write is destructive.
    writer = inv.name in _WRITERS
    for i, arg in enumerate(inv.argv[1:], start=1):
        if i in inv.dynamic or not arg or arg.startswith("-") and "=" not in arg:
            continue
        value = arg.split("=", 1)[1] if arg.startswith("-") else arg
        if not value or value.startswith(("http://", "https://")):
            continue
        if i not in inv.globbed:
            out += _secret_matches(policy, value, cwd)
        if writer and normalize(value, cwd) is None:
            out.append(
                Match(
                    "outside-workspace",
                    Decision.ASK,
                    f"`{shown}` changes {value!r}, outside the workspace",
                    destructive=True,
                )
            )
    return out


def _sed_reads_script(inv: Invocation) -> bool:
    """`sed -f FILE`: the script is in a file the policy cannot read."""
    return any(
        a == "--file" or a.startswith("--file=") or re.fullmatch(r"-[nrEsuz]*f.*", a)
        for a in inv.argv[1:]
    )


def _sed_scripts(inv: Invocation) -> list[str]:
    args = list(inv.argv[1:])
    scripts, i, positional = [], 0, []
    while i < len(args):
        a = args[i]
        if a in ("-e", "--expression") and i + 1 < len(args):
            scripts.append(args[i + 1])
            i += 2
            continue
        if a.startswith("--expression="):
            scripts.append(a.split("=", 1)[1])
        elif a.startswith("-e") and len(a) > 2:
            scripts.append(a[2:])
        elif a in ("-f", "--file"):
            i += 2
            continue
        elif not a.startswith("-"):
            positional.append(a)
        i += 1
    if not scripts and positional:
        scripts.append(positional[0])
    return scripts


# -- loading --------------------------------------------------------------------------


def check_examples(policy: Policy) -> list[str]:
    """The policy's own rules: each `match` example must match its rule and
    each `not_match` one must not; rule ids are unique. (The built-in rules
    are checked once, when this module loads.)"""
    problems = _example_problems(policy.doc.commands.rules, policy.doc.paths)
    ids = [*(r.id for r in policy.doc.commands.rules), *(r.id for r in policy.doc.paths)]
    builtin = {*(r.id for r in BUILTIN_COMMAND_RULES), *(r.id for r in BUILTIN_PATH_RULES)}
    for rid in sorted({i for i in ids if ids.count(i) > 1 or i in builtin}):
        problems.append(
            f"rule id {rid!r} is used more than once (or by a built-in rule); "
            "rule ids must be unique so the audit log names one rule"
        )
    return problems


def _example_problems(
    command_rules: Iterable[CommandRule], path_rules: Iterable[PathRule]
) -> list[str]:
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
            if not glob_matcher(prule.paths)(ex):
                problems.append(
                    f"paths rule {prule.id}: example {ex!r} matches none of {list(prule.paths)}"
                )
        for ex in prule.not_match:
            if glob_matcher(prule.paths)(ex):
                problems.append(
                    f"paths rule {prule.id}: example {ex!r} should not match "
                    f"{list(prule.paths)} but does"
                )
    return problems


_BROKEN_BUILTINS = _example_problems(BUILTIN_COMMAND_RULES, BUILTIN_PATH_RULES)
if _BROKEN_BUILTINS:  # a release with a broken built-in rule must not start
    raise RuntimeError("built-in policy rules fail their examples: " + "; ".join(_BROKEN_BUILTINS))


def parse_policy(data: Any, source: str = "<policy>") -> Policy:
    try:
        doc = PolicyDoc.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise PolicyError(
            source,
            [
                f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            ],
        ) from None
    return Policy(doc.name, doc)


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def combine(*docs: PolicyDoc | None) -> PolicyDoc:
    """One policy from several that all apply (the job's, a `--policy` file,
    the configuration's): the strictest of each setting wins. Tiers and limits
    take the minimum, `commands.default` the strictest decision, rules are
    all kept (deny wins anyway), network is on only if every policy allows
    it (hosts: those all allow), elevation only if every policy grants it."""
    given = [d for d in docs if d is not None]
    if not given:
        return DEFAULT_POLICY.doc
    if len(given) == 1:
        return given[0]
    limits = {f: min(getattr(d.limits, f) for d in given) for f in Limits.model_fields}
    session: dict[str, Any] = {
        f: _min_all([getattr(d.session_limits, f) for d in given])
        for f in SessionLimits.model_fields
        if f != "tool_calls"
    }
    calls: dict[str, int] = {}
    for d in given:
        for tool, cap in d.session_limits.tool_calls.items():
            calls[tool] = min(cap, calls.get(tool, cap))
    rates: dict[str, str] = {}
    for d in given:
        for tool, text in d.rate_limits.items():
            if tool not in rates or _per_s(text) < _per_s(rates[tool]):
                rates[tool] = text
    # An empty host list means any host: only the non-empty lists narrow, and
    # lists with no host in common leave no network at all.
    lists = [set(d.network.allow_hosts) for d in given if d.network.allow_hosts]
    hosts = set.intersection(*lists) if lists else set()
    network_on = all(d.network.enabled for d in given) and not (lists and not hosts)
    # Denials add up; private addresses stay reachable only where every policy
    # allows them (an empty allow_private allows none, unlike allow_hosts).
    deny_hosts = sorted({h for d in given for h in d.network.deny_hosts})
    private = set.intersection(*(set(d.network.allow_private) for d in given))
    return PolicyDoc(
        name="+".join(d.name for d in given),
        tier=strictest_tier(*(d.tier for d in given)),
        allow_destructive=all(d.allow_destructive for d in given),
        commands=Commands(
            default=max(Decision[d.commands.default.upper()] for d in given).word,
            rules=tuple(r for d in given for r in d.commands.rules),
        ),
        paths=tuple(r for d in given for r in d.paths),
        network=Network(
            enabled=network_on,
            allow_hosts=tuple(sorted(hosts)),
            deny_hosts=tuple(deny_hosts),
            allow_private=tuple(sorted(private)),
        ),
        limits=Limits(**limits),
        session_limits=SessionLimits(tool_calls=calls, **session),
        rate_limits=rates,
    )


def _min_all(values: list[Any]) -> Any:
    out = None
    for v in values:
        out = _min(out, v)
    return out


def _per_s(rate: str) -> float:
    count, window = parse_rate(rate)
    return count / window


def load_policy(path: Path) -> Policy:
    """Read, validate and self-check a policy YAML file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_policy(data, str(path))


DEFAULT_POLICY = parse_policy({"name": "default"}, "<built-in default>")


def decide(
    tool: str,
    args: dict[str, Any],
    policy: Policy = DEFAULT_POLICY,
    *,
    extra_paths: Iterable[tuple[str, str]] = (),
    **kw: Any,
) -> Verdict:
    """The verdict for a job step's request (its recorded arguments), plus the
    paths its plan would touch (`extra_paths`, (access, path) pairs)."""
    paths: list[tuple[str, str]] = list(extra_paths)
    if tool in ("write", "delete") and "path" in args:
        paths.append(("write", str(args["path"])))
    if tool in ("read", "list") and "path" in args:
        paths.append(("read", str(args["path"])))
    if tool in NETWORK_TOOLS:
        target = args.get("url")
        return decide_request(
            tool, policy, paths=paths, url=str(target) if target is not None else None, **kw
        )
    if tool == "shell":
        command = args.get("command")
        argv = command if isinstance(command, list) else None
        line = command if isinstance(command, str) else None
        return decide_request(
            tool, policy, command=line, argv=argv, paths=paths, cwd=str(args.get("cwd", ".")), **kw
        )
    return decide_request(tool, policy, paths=paths, **kw)

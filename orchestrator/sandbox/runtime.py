"""The sandbox every shell command runs in.

Two modes, chosen per call from what the machine offers (`probe()`):

- **bwrap**: bubblewrap gives the command its own mount, pid, network (unless
  allowed), IPC and UTS namespaces: the system is bound read-only
  (`--ro-bind / /`), the workspace read-write, `/tmp`, `/run` and `/dev/shm`
  are private and empty, `/proc` shows only the sandbox's processes, and every
  workspace file the session policy denies reading is shown empty and
  read-only (`workspace_masks()` finds them, `mask_args()` mounts). When the
  worker is root, the command runs as an unprivileged uid (`setpriv`) with no
  capabilities and `no_new_privs`, because RLIMIT_NPROC is not enforced for
  root (not even under a user namespace that maps back to root).
- **fallback**: no namespaces; the same uid drop, rlimits, a new session and
  process group, the same scrubbed environment and a throwaway HOME. Nothing
  can be mounted, so denied workspace files are not hidden.

In both, per-call limits come from `SandboxLimits` (built from the policy's
`Limits`): rlimits set in the child (CPU, file size, open files, no core
files; address space and process count when no cgroup does it better), a
cgroup per call for processes and memory when the machine lets us create one
(v1 `pids`/`memory`, or v2), and a sweep after the call that kills whatever
the command left running.

This module is split in two. The first half is pure: `plan()` turns a
`Request` and the probed `Host` facts into the exact argv, environment,
rlimits and cgroup limits, so it is unit-testable without running anything.
The second half is the thin process part: probing, workspace ownership,
cgroups, spawning and sweeping. `orchestrator.tools.shell` supervises the
process (deadline, output cap) in between.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Literal, NamedTuple

from orchestrator.errors import ToolInputError
from orchestrator.guard.globs import glob_matcher

__all__ = [
    "SandboxLimits",
    "Host",
    "Cgroups",
    "Request",
    "Plan",
    "plan",
    "scrub_env",
    "bwrap_argv",
    "forbidden_env",
    "probe",
    "Mode",
    "SANDBOX_UID",
    "GIT_ENV",
    "Prepared",
    "prepare",
    "spawn",
    "describe",
    "ancestors_of",
    "Mask",
    "MaskRules",
    "Masker",
    "masker",
    "workspace_masks",
    "empty_file",
]

from orchestrator.sandbox.limits import SandboxLimits

Mode = Literal["auto", "bwrap", "fallback"]
SANDBOX_UID = 65534  # nobody / nogroup
SANDBOX_HOME = "/tmp/sandbox-home"  # inside bwrap's private /tmp
CALL_ID_VAR = "SANDBOX_CALL_ID"  # marks the call's processes for the sweep
MB = 1024 * 1024

# git reads neither the machine's nor a user's configuration, runs no hooks and
# no fsmonitor, whatever the repository's own config says (command-line
# config, which GIT_CONFIG_COUNT is, wins over .git/config).
GIT_ENV: dict[str, str] = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_COUNT": "3",
    "GIT_CONFIG_KEY_0": "core.hooksPath",
    "GIT_CONFIG_VALUE_0": "/dev/null",
    "GIT_CONFIG_KEY_1": "core.fsmonitor",
    "GIT_CONFIG_VALUE_1": "false",
    "GIT_CONFIG_KEY_2": "protocol.ext.allow",
    "GIT_CONFIG_VALUE_2": "never",
}

# Names a step may not set: they make a program load or run code it was not
# asked to (LD_PRELOAD, BASH_ENV, exported bash functions) or undo GIT_ENV.
_FORBIDDEN_PREFIXES = ("LD_", "GIT_", "BASH_FUNC_")
_FORBIDDEN_NAMES = frozenset(
    {"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", CALL_ID_VAR}
)


# -- inputs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Cgroups:
    """Where per-call cgroups can be made: v1 (`pids` and `memory` hierarchies)
    or v2 (one directory with both controllers enabled for its children)."""

    version: Literal["v1", "v2"] | None = None
    pids: str | None = None  # parent directory for the call's pids cgroup
    memory: str | None = None  # ... memory cgroup (v2: the same as pids)
    why: str = "not probed"


@dataclass(frozen=True)
class Host:
    """What the machine offers; `probe()` reads it, tests build it by hand."""

    bwrap: str | None = None
    bwrap_version: str | None = None
    # Why an installed `bwrap` cannot be used (a container without user
    # namespaces, a seccomp profile that refuses them); None when it works.
    bwrap_problem: str | None = None
    setpriv: str | None = None
    setpriv_version: str | None = None
    env_tool: str = "/usr/bin/env"
    prlimit: str | None = None
    is_root: bool = False
    cgroups: Cgroups = field(default_factory=Cgroups)
    path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    # The host setting that spares a cgroup migration its RCU grace period
    # ("rcu_expedited=1", "favordynmods"), or None when neither is set.
    fast_migration: str | None = None

    def mode(self, wanted: Mode = "auto") -> Literal["bwrap", "fallback"]:
        if wanted == "fallback" or (wanted == "auto" and self.bwrap is None):
            return "fallback"
        if self.bwrap is None and self.bwrap_problem:
            raise ToolInputError(
                f"the bubblewrap sandbox was asked for but `bwrap` cannot "
                f"start here: {self.bwrap_problem}. Allow user namespaces "
                "(docs/deployment.md) or let the sandbox choose its mode."
            )
        if self.bwrap is None:
            raise ToolInputError(
                "the bubblewrap sandbox was asked for but `bwrap` is not "
                "installed; install it (apt-get install bubblewrap) or let "
                "the sandbox choose its mode."
            )
        return "bwrap"

    @property
    def drops_uid(self) -> bool:
        return self.is_root and self.setpriv is not None


class Mask(NamedTuple):
    """A workspace path (absolute) the policy denies reading: bubblewrap binds
    an empty read-only file over a file (or `source`, a file the worker made:
    the format part of a repository's `.git/config`), an empty read-only
    tmpfs over a directory."""

    path: str
    dir: bool = False
    source: str | None = None


# The path globs of each policy rule that denies reading, one tuple per rule
# (a rule's `!` globs exclude within that rule only).
MaskRules = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Request:
    """One command to run. `ancestors` are (path, mode, owner uid) of every
    directory from `/` down to the workspace's parent, for deciding which
    ones the unprivileged uid could not pass through."""

    argv: tuple[str, ...]
    workspace: str
    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)  # env_base, then the step's env
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    network: bool = False
    mode: Mode = "auto"
    ancestors: tuple[tuple[str, int, int], ...] = ()
    home: str | None = None  # fallback: the throwaway HOME made for this call
    call_id: str = "call"
    info_fd: int | None = None  # bwrap writes its sandbox init's pid here
    block_fd: int | None = None  # bwrap waits on it (until the init joined the cgroups)
    masks: tuple[Mask, ...] = ()  # bwrap: denied workspace paths, shown empty and read-only
    empty_file: str | None = None  # bwrap: the empty read-only file bound over masked files


@dataclass(frozen=True)
class Plan:
    mode: Literal["bwrap", "fallback"]
    argv: list[str]
    env: dict[str, str]
    cwd: str
    rlimits: tuple[tuple[int, int], ...]  # (resource.RLIMIT_*, value): soft = hard
    cgroup_limits: dict[str, int]  # "pids" / "memory" (bytes); empty: none
    uid: int | None  # the uid the command runs as, when dropped
    # What the child must do between fork and exec (Python's preexec_fn, which
    # costs a full fork instead of a vfork): set `rlimits` when no `prlimit`
    # sets them in the chain, join the cgroups in the fallback (bwrap's init
    # joins them while it waits on `block_fd`).
    preexec_rlimits: bool = False
    preexec_cgroups: bool = False


# -- pure planning --------------------------------------------------------------------


def forbidden_env(names: Sequence[str]) -> list[str]:
    return sorted(n for n in names if n in _FORBIDDEN_NAMES or n.startswith(_FORBIDDEN_PREFIXES))


def scrub_env(path: str, home: str, extra: Mapping[str, str], call_id: str) -> dict[str, str]:
    """PATH, HOME (throwaway), LANG, TMPDIR, then `extra` (the caller's base and
    the step's env), then GIT_ENV and the call marker, which nothing overrides.
    Names that would inject code are refused, not silently dropped."""
    bad = forbidden_env(list(extra))
    if bad:
        raise ToolInputError(
            f"the step's environment sets {', '.join(bad)}, which would make "
            "programs load or run other code (LD_*, BASH_ENV, exported "
            "functions) or change how git treats the repository (GIT_*); "
            "the sandbox refuses them. Remove them from the step's `env` "
            "(git options go on the command line)."
        )
    return {
        "PATH": path,
        "HOME": home,
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp" if home == SANDBOX_HOME else home,
        **extra,
        **GIT_ENV,
        CALL_ID_VAR: call_id,
    }


def _under(path: str, top: str) -> bool:
    return PurePosixPath(path).is_relative_to(top)


def bwrap_argv(bwrap: str, req: Request, uid: int | None) -> list[str]:
    """bubblewrap's arguments, in mount order: the system read-only, private
    /tmp and /run, then (when the command runs as `uid`) a private empty
    directory over the outermost ancestor `uid` could not pass through, the
    workspace's ancestors recreated as plain 0755 directories, the workspace."""
    masks = ["/tmp", "/run"]
    args = [
        bwrap,
        "--ro-bind",
        "/",
        "/",
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
        "--perms",
        "0755",
        "--tmpfs",
        "/run",
    ]
    if uid is not None:
        for path, mode, owner in req.ancestors:
            if path == "/" or any(_under(path, m) for m in masks):
                continue
            if not mode & stat.S_IXOTH and owner != uid:
                masks.append(path)  # uid cannot get in: nothing below is lost to it
                args += ["--perms", "0755", "--tmpfs", path]
                break
    for path, _, _ in req.ancestors:
        if path != "/" and any(_under(path, m) and path != m for m in masks):
            args += ["--perms", "0755", "--dir", path]
    args += ["--bind", req.workspace, req.workspace]
    args += mask_args(req.masks, req.empty_file)
    args += [
        "--perms",
        "0777",
        "--dir",
        SANDBOX_HOME,
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--tmpfs",
        "/dev/shm",
        "--proc",
        "/proc",
        "--unshare-pid",
        "--unshare-ipc",
    ]
    if not req.network:
        args.append("--unshare-net")
    if req.info_fd is not None:
        args += ["--info-fd", str(req.info_fd)]
    if req.block_fd is not None:
        args += ["--block-fd", str(req.block_fd)]
    args += ["--die-with-parent", "--new-session", "--chdir", req.cwd, "--"]
    return args


def mask_args(masks: Sequence[Mask], empty: str | None) -> list[str]:
    """Mounts hiding denied workspace paths, after the workspace's own bind: a
    file gets the empty file bound read-only over it (reads see nothing,
    writes, renames and hard links fail), a directory an empty tmpfs that is
    then made read-only. Parents come before what is below them."""
    masks = tidy_masks(masks)
    if any(not m.dir and m.source is None for m in masks) and empty is None:
        raise ValueError("masking files needs the empty file to bind over them")
    args: list[str] = []
    for m in masks:
        if m.dir:
            args += ["--perms", "0555", "--tmpfs", m.path, "--remount-ro", m.path]
        else:
            args += ["--ro-bind", str(m.source or empty), m.path]
    return args


# What of a repository's .git/config a masked copy keeps: how to read the
# repository (object format, worktree layout, line endings), nothing that
# names a remote, holds a credential, includes a file or runs a program.
GIT_FORMAT_KEYS = frozenset(
    {
        "core.repositoryformatversion",
        "core.bare",
        "core.worktree",
        "core.filemode",
        "core.symlinks",
        "core.ignorecase",
        "core.precomposeunicode",
        "core.logallrefupdates",
        "core.autocrlf",
        "core.eol",
        "core.safecrlf",
        "core.checkstat",
        "core.trustctime",
        "core.sparsecheckout",
        "core.sparsecheckoutcone",
        "core.splitindex",
        "core.untrackedcache",
    }
)


def git_format_config(listing: bytes) -> str:
    """The copy of a `.git/config` shown in its place, from `git config
    --null --list` of it: the GIT_FORMAT_KEYS and every `extensions.*` key
    (a sha256 or worktree-config repository read with an empty config is
    misread, and a write through it corrupts the index), nothing else."""
    sections: dict[str, list[str]] = {}
    for item in listing.decode("utf-8", "replace").split("\0"):
        key, newline, value = item.partition("\n")
        key = key.lower()
        section, _, name = key.partition(".")
        if key in GIT_FORMAT_KEYS or (section == "extensions" and name.isalnum()):
            quoted = (
                (value if newline else "true")
                .replace("\\", "\\\\")
                .replace('"', '\\"')
                .replace("\n", "\\n")
            )
            sections.setdefault(section, []).append(f'\t{name} = "{quoted}"\n')
    return "".join(f"[{sec}]\n" + "".join(lines) for sec, lines in sections.items())


def tidy_masks(masks: Sequence[Mask]) -> tuple[Mask, ...]:
    """Sorted (parents first), without duplicates or anything below a masked
    directory (it is hidden already, and nothing can be mounted there)."""
    out: list[Mask] = []
    dirs: list[str] = []
    for m in sorted(set(masks)):
        if any(_under(m.path, d) for d in dirs):
            continue
        out.append(m)
        if m.dir:
            dirs.append(m.path)
    return tuple(out)


class Masker:
    """Which workspace paths a command must not see, from the policy's denied
    read globs, made cheap enough to ask for every file of a big tree:

    - a rule's `P/**` (or `P/`) glob is asked once per directory: a directory
      matching P is masked whole and not walked (every path below it matches);
    - globs without `/` (and `**/NAME`, the same regex) only look at the file
      name, and only names passing a literal prefix/suffix test reach the regex;
    - other globs run on the whole path, but only for names matching their
      last component (a cheap gate), when they have one.

    Each answer is exactly `glob_matcher(rule)(rel)` of some rule (files below
    a masked directory aside); rules with `!` exclusions are run whole."""

    def __init__(self, rules: MaskRules) -> None:
        dirs: list[str] = []
        names: list[str] = []
        gates: list[str] = []
        gated: list[str] = []
        whole: list[Callable[[str], bool]] = []
        for rule in rules:
            if any(g.startswith("!") for g in rule):
                whole.append(glob_matcher(tuple(rule)))
                continue
            for g in rule:
                g = g + "**" if g.endswith("/") else g
                last = g.rsplit("/", 1)[-1]
                prefix = g[:-3]
                if (
                    g.endswith("/**")
                    and prefix.strip("/")
                    and not prefix.endswith("**")
                    and "{" not in prefix
                ):
                    dirs.append(prefix if "/" in prefix else "/" + prefix)  # stays anchored
                elif g.startswith("**/") and "/" not in g[3:] and "**" not in g[3:]:
                    names.append(g[3:])
                elif "/" not in g and "**" not in g:
                    names.append(g)
                elif "/" in g and "**" not in last and not any(c in g for c in "{[\\"):
                    gates.append(last)
                    gated.append(g)
                else:
                    whole.append(glob_matcher((g,)))
        self._dir = glob_matcher(tuple(dirs)) if dirs else None
        self._name = _prefiltered(names, glob_matcher(tuple(names))) if names else None
        self._gate = _prefiltered(gates, glob_matcher(tuple(gates))) if gates else None
        self._gated = glob_matcher(tuple(gated)) if gated else None
        self._whole = tuple(whole)

    def whole_dir(self, rel: str) -> bool:
        """Whether every path below directory `rel` is denied."""
        return self._dir is not None and self._dir(rel)

    def file(self, rel: str) -> bool:
        """Whether file `rel` (outside the directories `whole_dir` masks) is denied."""
        name = rel.rpartition("/")[2]
        if self._name is not None and self._name(name):
            return True
        if self._gate is not None and self._gate(name) and self._gated(rel):  # type: ignore[misc]
            return True
        return bool(self._whole) and any(m(rel) for m in self._whole)


def _literals(glob: str) -> tuple[str, str, str] | None:
    """(literal prefix, literal suffix, longest literal run) every name matching
    the one-component `glob` must have; None when braces or escapes make that
    hard to say."""
    if any(c in glob for c in "{}\\"):
        return None
    runs, run, i = [], "", 0
    while i < len(glob):
        c = glob[i]
        if c in "*?[":
            runs.append(run)
            run = ""
            if c == "[":  # up to the last `]`: no need to parse classes exactly
                end = glob.rfind("]")
                if end <= i:
                    return None
                i = end
        else:
            run += c
        i += 1
    runs.append(run)
    return runs[0], runs[-1], max(runs, key=len)


def _prefiltered(globs: Sequence[str], full: Callable[[str], bool]) -> Callable[[str], bool]:
    """`full` (name globs), asked only for names that have some glob's literal
    prefix, suffix or middle: two C string calls reject almost every name."""
    prefixes, suffixes, middles, always = [], [], [], False
    for g in globs:
        lit = _literals(g)
        if lit is None or not any(lit):
            always = True
        elif lit[0]:
            prefixes.append(lit[0])
        elif lit[1]:
            suffixes.append(lit[1])
        else:
            middles.append(lit[2])
    if always:
        return full
    pre, suf = tuple(prefixes), tuple(suffixes)

    def match(name: str) -> bool:
        if not (
            name.startswith(pre)
            or name.endswith(suf)
            or middles
            and any(m in name for m in middles)
        ):
            return False
        return full(name)

    return match


@lru_cache(maxsize=64)
def masker(rules: MaskRules) -> Masker:
    return Masker(rules)


def setpriv_argv(setpriv: str, uid: int) -> list[str]:
    """Drop to `uid` with no capabilities, no set-id elevation. setpriv keeps
    its capabilities until its own execve (measured: it execs with
    CAP_DAC_OVERRIDE), so what it execs must be a trusted program (`prlimit`
    or `env`), which loses them and looks the command up with the
    unprivileged uid's rights."""
    return [
        setpriv,
        "--reuid",
        str(uid),
        "--regid",
        str(uid),
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]


_PRLIMIT_NAMES = {
    resource.RLIMIT_CPU: "cpu",
    resource.RLIMIT_FSIZE: "fsize",
    resource.RLIMIT_NOFILE: "nofile",
    resource.RLIMIT_CORE: "core",
    resource.RLIMIT_AS: "as",
    resource.RLIMIT_NPROC: "nproc",
}


def prlimit_argv(prlimit: str, limits: Sequence[tuple[int, int]]) -> list[str]:
    return [prlimit, *(f"--{_PRLIMIT_NAMES[r]}={v}:{v}" for r, v in limits), "--"]


def rlimits(limits: SandboxLimits, cgroup_limits: Mapping[str, int]) -> tuple[tuple[int, int], ...]:
    """What the child sets before exec. Address space and process count only
    when no cgroup holds them: RLIMIT_AS also counts reserved, untouched memory
    (it breaks runtimes that reserve big heaps), and RLIMIT_NPROC counts every
    process of the uid, so concurrent calls would share one budget."""
    out = [
        (resource.RLIMIT_CPU, max(1, int(limits.cpu_s + 0.999))),
        (resource.RLIMIT_FSIZE, limits.file_size_mb * MB),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CORE, 0),
    ]
    if "memory" not in cgroup_limits:
        out.append((resource.RLIMIT_AS, limits.memory_mb * MB))
    if "pids" not in cgroup_limits:
        out.append((resource.RLIMIT_NPROC, limits.processes))
    return tuple(out)


def plan(req: Request, host: Host) -> Plan:
    """The whole sandbox for one call, from its inputs alone."""
    mode = host.mode(req.mode)
    uid = SANDBOX_UID if host.drops_uid else None
    cg = host.cgroups
    cgroup_limits: dict[str, int] = {}
    if cg.pids:
        cgroup_limits["pids"] = req.limits.processes
    if cg.memory:
        cgroup_limits["memory"] = req.limits.memory_mb * MB
    limits = rlimits(req.limits, cgroup_limits)
    chain = prlimit_argv(host.prlimit, limits) if host.prlimit else []
    if uid is not None and host.setpriv:
        if not chain:
            chain = [host.env_tool, "--"]
            if "=" in req.argv[0]:
                raise ToolInputError(
                    f"program {req.argv[0]!r} contains '=', which `env` would "
                    "take for a variable; call it by a path without '='."
                )
        chain = setpriv_argv(host.setpriv, uid) + chain
    if mode == "bwrap":
        assert host.bwrap is not None
        home = SANDBOX_HOME
        argv = bwrap_argv(host.bwrap, req, uid) + chain + list(req.argv)
    else:
        if req.home is None:
            raise ValueError("the fallback sandbox needs a throwaway home directory")
        if uid is not None:
            _check_enterable(req.ancestors, uid)
        home = req.home
        argv = chain + list(req.argv)
    env = scrub_env(host.path, home, req.env, req.call_id)
    return Plan(
        mode=mode,
        argv=argv,
        env=env,
        cwd=req.cwd,
        rlimits=limits,
        cgroup_limits=cgroup_limits,
        uid=uid,
        preexec_rlimits=host.prlimit is None,
        preexec_cgroups=bool(cgroup_limits) and (mode == "fallback" or req.block_fd is None),
    )


def _check_enterable(ancestors: Sequence[tuple[str, int, int]], uid: int) -> None:
    """Without bubblewrap nothing can be remounted: the workspace's parents
    must let `uid` through, or every absolute path into it fails."""
    for path, mode, owner in ancestors:
        if not mode & (stat.S_IXUSR if owner == uid else stat.S_IXOTH):
            raise ToolInputError(
                f"the fallback sandbox runs commands as uid {uid}, which cannot enter {path} "
                f"(mode {stat.S_IMODE(mode):04o}), a parent of the workspace. Keep workspaces "
                "under folders others may search (chmod o+x), or install bubblewrap, which "
                "rebuilds the path inside its sandbox."
            )


def describe(host: Host) -> dict[str, object]:
    """What `orchestrator doctor` reports: the active mode, its tools, and in
    plain words what it protects against and what it does not."""
    mode = host.mode("auto")
    cg = host.cgroups
    protects = [
        "the worker's environment: commands see PATH, LANG, a throwaway HOME, the step's "
        "env and git hardening only (no LD_*/BASH_ENV/GIT_* overrides)",
        "git hooks, fsmonitor and system/global git config (core.hooksPath=/dev/null)",
        "runaway commands: wall-clock timeout killing everything the command started, "
        "output capped (head and tail kept), stdin closed",
        "CPU seconds, file size and open files per process (rlimits)",
    ]
    gaps: list[str] = []
    if host.drops_uid:
        protects.append(
            f"privileges: the command runs as uid {SANDBOX_UID} with no "
            "capabilities and no_new_privs (setuid programs cannot elevate)"
        )
    elif host.is_root:
        gaps.append(
            "setpriv is missing: commands run as root, so the process limit does "
            "not hold and nothing stops writes the worker could make"
        )
    else:
        gaps.append(
            "the worker is not root: commands run as the worker's own user, and "
            "RLIMIT_NPROC counts all of that user's processes"
        )
    if cg.version:
        protects.append(
            f"memory and process count for the whole call (cgroup {cg.version}), "
            "and a sweep of every process of the call afterwards"
        )
    else:
        gaps.append(
            f"no usable cgroup ({cg.why}): memory is capped per process by address "
            "space, processes by RLIMIT_NPROC (shared by concurrent calls), and "
            f"leftover processes are found by their {CALL_ID_VAR} environment "
            "marker, which a process can erase"
        )
    if mode == "bwrap":
        protects += [
            "writes outside the workspace: the system is read-only, /tmp, /run and "
            "/dev/shm are private and empty",
            "the network (own network namespace) unless the policy enables it",
            "other processes: own pid namespace, killing it kills everything inside "
            "(daemons, TERM-trappers)",
            "unix sockets under /run and /tmp (databases, brokers) are hidden",
            "workspace files the session policy denies reading (.env*, *.pem, .ssh/, "
            ".git/config, ... and the policy's own denied read paths): each is shown empty "
            "and read-only, however the command reaches it (cat *, grep -r, a script, a "
            "symlink or hard link inside the workspace)",
        ]
        gaps += [
            "reads: every world-readable file on the machine stays readable "
            "(the system is bound read-only, not hidden)",
            "a secret committed to git stays readable through the repository's objects "
            "(git show HEAD:.env); links leading out of the workspace reach what uid "
            f"{SANDBOX_UID} may read there",
            "with the network enabled there is no egress filter: allow_hosts is not "
            "enforced, and the host's loopback services are reachable",
            "unix sockets outside /run and /tmp stay connectable (read-only mounts do not "
            "stop connect())",
            "the kernel is shared: a kernel exploit escapes (no seccomp filter)",
        ]
    else:
        gaps += [
            "no namespaces ("
            + (
                f"bubblewrap cannot start: {host.bwrap_problem}"
                if host.bwrap_problem
                else "bubblewrap is not installed"
            )
            + "): the command can write wherever "
            f"{'uid ' + str(SANDBOX_UID) if host.drops_uid else 'the worker'} can "
            "(e.g. /tmp, /var/tmp, /dev/shm), read every file that uid can, see and "
            "signal that uid's processes, and use the network and any unix socket",
            "files the policy denies inside the workspace (.env, keys, .ssh/, "
            ".git/config) are NOT hidden: without bubblewrap nothing can be mounted over "
            "them, so `cat *`, `grep -r` or a script reads them; only a command naming "
            "one is refused by the policy. Install bubblewrap to hide them",
            "a process that double-forks out of the process group is found only by the "
            "cgroup or the environment marker",
        ]
    return {
        "mode": mode,
        "bwrap": {"path": host.bwrap, "version": host.bwrap_version, "problem": host.bwrap_problem},
        "setpriv": {"path": host.setpriv, "version": host.setpriv_version},
        "runs_as": f"uid {SANDBOX_UID}"
        if host.drops_uid
        else ("root" if host.is_root else "the worker's user"),
        "cgroups": {
            "usable": cg.version is not None,
            "version": cg.version,
            "pids": cg.pids,
            "memory": cg.memory,
            "detail": cg.why + migration_note(host),
            "fast_migration": host.fast_migration,
        },
        "protects_against": protects,
        "does_not_protect_against": gaps,
    }


def migration_note(host: Host) -> str:
    """What moving each call into its cgroup costs on this host, and the host
    settings that make it cheap (measured in bench/README.md)."""
    if host.cgroups.version is None:
        return ""
    if host.fast_migration:
        return f"; migrations into it are fast ({host.fast_migration})"
    return (
        "; each call's move into its cgroup waits for an RCU grace period (5-15 ms "
        "measured): set /sys/kernel/rcu_expedited=1 or mount a cgroup hierarchy with "
        "-o favordynmods to bring it under 1 ms (see docs/security.md for the trade-offs)"
    )


# -- the process part -------------------------------------------------------------------

_CG_PARENT = "orchestrator-sandbox"


@lru_cache(maxsize=1)
def probe() -> Host:
    """Read the machine once per process: tools, versions, uid, cgroups."""
    bwrap = shutil.which("bwrap")
    problem = _bwrap_problem(bwrap) if bwrap else None
    if problem is not None:
        bwrap = None
    setpriv = shutil.which("setpriv")
    is_root = os.geteuid() == 0
    path = os.environ.get("PATH") or Host.path
    if is_root and setpriv:
        # Entries the unprivileged uid cannot enter would only shadow usable ones
        # (a pyenv shim under /root before /usr/bin/python3).
        path = ":".join(d for d in path.split(":") if d and _enterable(d, SANDBOX_UID))
    return Host(
        bwrap=bwrap,
        bwrap_version=_version([bwrap, "--version"]) if bwrap else None,
        bwrap_problem=problem,
        setpriv=setpriv,
        setpriv_version=_version([setpriv, "--version"]) if setpriv else None,
        env_tool=shutil.which("env") or "/usr/bin/env",
        prlimit=shutil.which("prlimit"),
        is_root=is_root,
        cgroups=_probe_cgroups(),
        path=path or Host.path,
        fast_migration=_fast_migration(),
    )


def _bwrap_problem(bwrap: str) -> str | None:
    """Why `bwrap` cannot start the namespaces a call needs, or None when it can.
    Installed is not enough: a default container has the binary but refuses
    user namespaces, and every shell call would then fail instead of falling back."""
    try:
        done = subprocess.run(
            [
                bwrap,
                "--ro-bind",
                "/",
                "/",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--unshare-pid",
                "--unshare-net",
                "--die-with-parent",
                "true",
            ],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} did not run ({exc})"
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        return f"{bwrap} exited {done.returncode}: {why[0] if why else 'no message'}"
    return None


def _fast_migration() -> str | None:
    """Which host setting makes cgroup migrations skip the RCU grace period."""
    with contextlib.suppress(OSError):
        if Path("/sys/kernel/rcu_expedited").read_text().strip() not in ("", "0"):
            return "rcu_expedited=1"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if (
                len(fields) > 3
                and fields[2].startswith("cgroup")
                and "favordynmods" in fields[3].split(",")
            ):
                return f"favordynmods on {fields[1]}"
    return None


def _enterable(directory: str, uid: int) -> bool:
    """Whether `uid` (with no groups) can search `directory` and every parent."""
    p = Path(directory)
    if not p.is_absolute():
        return False
    for d in (p, *p.parents):
        try:
            st = d.stat()
        except OSError:
            return False
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 else None


def _probe_cgroups(root: str = "/sys/fs/cgroup") -> Cgroups:
    """Detect what is mounted (never assume), and check we can make a child."""
    v2 = Path(root, "cgroup.controllers")
    if v2.is_file():
        wanted = {"pids", "memory"}
        if not wanted <= set(v2.read_text().split()):
            return Cgroups(why=f"cgroup v2 at {root} lacks the pids or memory controller")
        parent = Path(root, _CG_PARENT)
        try:
            parent.mkdir(exist_ok=True)
            (parent / "cgroup.subtree_control").write_text("+pids +memory")
            _probe_child(parent)
        except OSError as err:
            return Cgroups(why=f"cannot create cgroups under {parent}: {err.strerror}")
        return Cgroups("v2", str(parent), str(parent), f"cgroup v2 under {parent}")
    dirs = {c: Path(root, c) for c in ("pids", "memory")}
    if not all((d / "cgroup.procs").is_file() for d in dirs.values()):
        return Cgroups(why=f"neither cgroup v2 nor v1 pids+memory are mounted at {root}")
    parents = {c: d / _CG_PARENT for c, d in dirs.items()}
    try:
        for p in parents.values():
            p.mkdir(exist_ok=True)
            _probe_child(p)
    except OSError as err:
        return Cgroups(why=f"cannot create cgroups under {root}/{{pids,memory}}: {err.strerror}")
    return Cgroups(
        "v1",
        str(parents["pids"]),
        str(parents["memory"]),
        f"cgroup v1 under {parents['pids']} and {parents['memory']}",
    )


def _probe_child(parent: Path) -> None:
    child = parent / f"probe-{os.getpid()}"
    child.mkdir(exist_ok=True)
    child.rmdir()
    _remove_stale(parent)


@dataclass
class Prepared:
    """What a call set up and `finish()` undoes: cgroups, throwaway home,
    workspace ownership."""

    call_id: str
    cgroups: list[Path] = field(default_factory=list)
    home: Path | None = None
    owners: dict[bytes, tuple[int, int]] | None = None  # relative path -> (uid, gid)
    root_owner: tuple[int, int] = (0, 0)
    workspace: Path | None = None
    cgroup_error: str | None = None  # set: run with rlimits only
    info: tuple[int, int] | None = None  # pipe (read, write): bwrap's --info-fd
    block: tuple[int, int] | None = None  # pipe (read, write): bwrap's --block-fd
    init_pidfd: int | None = None  # bwrap's sandbox init, once started


def ancestors_of(workspace: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in reversed(workspace.parents):
        st = p.stat()
        out.append((str(p), st.st_mode, st.st_uid))
    return tuple(out)


# -- masks: the workspace paths the policy denies reading ---------------------------------

_RACY_NS = 2_000_000_000  # a directory this recent may change again within one timestamp tick
_MASK_CACHE_SIZE = 32  # workspaces (with their rules) whose walk is kept


@dataclass(frozen=True)
class _Dir:
    """One directory's part of the walk, reused while the directory keeps its
    inode and mtime (any entry created, removed or renamed in it changes its
    mtime; chown, which the ownership hand-over does every call, does not)."""

    ino: int
    mtime_ns: int
    kept: bool  # False: changed too recently to trust; read again
    masks: tuple[Mask, ...]
    subdirs: tuple[str, ...]  # relative paths still to walk
    files: tuple[str, ...]  # names of its regular files (for hard links)


_mask_cache: OrderedDict[tuple[str, MaskRules], dict[str, _Dir]] = OrderedDict()
_mask_lock = threading.Lock()


class _Stale(Exception):
    """A kept directory's listing no longer matches its subdirectories."""


def workspace_masks(root: Path, rules: MaskRules) -> tuple[Mask, ...]:
    """Every path under `root` that `rules` deny reading, for bubblewrap to
    hide. Walks the tree without following symlinks and without descending
    into `.git` (its own files, such as `.git/config`, are checked); masks a
    directory whole when everything below it is denied; for a symlink with a
    denied name, masks where it leads (when that is inside the workspace);
    masks other hard links of a denied file. A symlink with an allowed name
    pointing at a denied file needs nothing: the mount sits on the target.

    The walk is kept per workspace and rules, and a directory is read again
    only when its inode or mtime changed (or it changed within the last 2 s,
    when a second change could keep the same mtime), so a call on an
    unchanged tree costs one lstat per directory. A command can set a
    directory's mtime back (it owns the workspace during the call): then the
    subdirectories of the kept listing are checked to be the same inodes, and
    any difference (a folder renamed, replaced, gone) drops the kept walk."""
    top = str(root)
    key = (top, rules)
    with _mask_lock:
        old = _mask_cache.get(key, {})
    match = masker(rules)
    try:
        walked = _walk(top, old, match)
    except _Stale:
        walked = _walk(top, {}, match)
    with _mask_lock:
        _mask_cache[key] = walked
        _mask_cache.move_to_end(key)
        while len(_mask_cache) > _MASK_CACHE_SIZE:
            _mask_cache.popitem(last=False)
    masks = tidy_masks([m for d in walked.values() for m in d.masks])
    linked = _linked(masks)  # asked every call: a link can be made in another folder
    if linked:
        masks = tidy_masks([*masks, *_other_links(top, walked, linked)])
    return tuple(_with_source(m) for m in masks)


def _walk(top: str, old: Mapping[str, _Dir], match: Masker) -> dict[str, _Dir]:
    now = time.time_ns()
    walked: dict[str, _Dir] = {}
    stack: list[tuple[str, bool]] = [("", False)]  # (path, listed by a kept parent)
    while stack:
        rel, vouched = stack.pop()
        path = os.path.join(top, rel) if rel else top
        before = old.get(rel)
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            if vouched:
                raise _Stale(rel)
            continue  # gone since its parent was read
        if vouched and (before is None or before.ino != st.st_ino):
            raise _Stale(rel)
        keep = (
            before is not None
            and before.kept
            and (before.ino, before.mtime_ns) == (st.st_ino, st.st_mtime_ns)
        )
        d = before if keep and before is not None else _read_dir(top, rel, st, match, now)
        walked[rel] = d
        stack.extend((sub, keep) for sub in d.subdirs)
    return walked


def _read_dir(top: str, rel: str, st: os.stat_result, match: Masker, now: int) -> _Dir:
    prefix = rel + "/" if rel else ""
    in_git = rel.rpartition("/")[2] == ".git"  # the repository: its own files only
    masks: list[Mask] = []
    subdirs: list[str] = []
    files: list[str] = []
    cacheable = st.st_mtime_ns < now - _RACY_NS
    try:
        entries = list(os.scandir(os.path.join(top, rel) if rel else top))
    except OSError:
        entries = []
        cacheable = False
    for e in entries:
        r = prefix + e.name
        if e.is_dir(follow_symlinks=False):
            if match.whole_dir(r):
                masks.append(Mask(e.path, True))
            elif not in_git:
                subdirs.append(r)
        elif e.is_file(follow_symlinks=False):
            files.append(e.name)
            if match.file(r):
                masks.append(Mask(e.path))
        elif e.is_symlink() and (match.file(r) or match.whole_dir(r)):
            cacheable = False  # where it leads can change without this folder
            target = _link_target(top, e.path)
            if target is not None:
                masks.append(target)
    return _Dir(st.st_ino, st.st_mtime_ns, cacheable, tuple(masks), tuple(subdirs), tuple(files))


def _link_target(top: str, link: str) -> Mask | None:
    """The mask for where a denied-named symlink leads, when that is a file or
    directory inside the workspace (outside it, the system's permissions
    decide, as for every other file there)."""
    try:
        real = os.path.realpath(link, strict=True)
        st = os.stat(real)
    except (OSError, RuntimeError):
        return None
    if not _under(real, top) or real == top:
        return None
    if stat.S_ISDIR(st.st_mode):
        return Mask(real, True)
    return Mask(real) if stat.S_ISREG(st.st_mode) else None


def _linked(masks: Sequence[Mask]) -> set[tuple[int, int]]:
    """(device, inode) of the masked files that have other hard links."""
    out = set()
    for m in masks:
        if not m.dir:
            with contextlib.suppress(OSError):
                st = os.lstat(m.path)
                if st.st_nlink > 1:
                    out.add((st.st_dev, st.st_ino))
    return out


def _other_links(top: str, walked: Mapping[str, _Dir], linked: set[tuple[int, int]]) -> list[Mask]:
    """Files that are hard links of a masked file under another name: the
    rare case, so it may stat every file."""
    out = []
    for rel, d in walked.items():
        for name in d.files:
            path = os.path.join(top, rel, name) if rel else os.path.join(top, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) in linked:
                    out.append(Mask(path))
    return out


_private: str | None = None
_git_copies: dict[tuple[int, int, int, int], str] = {}


def _private_dir() -> str:
    """A folder only the worker may enter, for the files bound over masked
    ones: made once per process (removed at exit), again if it was removed."""
    global _private
    if _private is None or not os.path.isdir(_private):
        _private = tempfile.mkdtemp(prefix="orch-sandbox-masks-")
        atexit.register(shutil.rmtree, _private, True)
    return _private


def _read_only_file(name: str, data: bytes) -> str:
    """`name` in the private folder with `data`, mode 0444, the worker's own;
    made again when missing or changed."""
    path = os.path.join(_private_dir(), name)
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if (
            stat.S_ISREG(st.st_mode)
            and st.st_size == len(data)
            and st.st_uid == os.geteuid()
            and stat.S_IMODE(st.st_mode) == 0o444
        ):
            return path
    tmp = f"{path}.{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o444)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def empty_file() -> str:
    """The empty, read-only file bubblewrap binds over masked files."""
    with _mask_lock:
        return _read_only_file("empty", b"")


def _git_config_copy(path: str) -> str | None:
    """The file shown instead of the repository config at `path`: its format
    part (`git_format_config`), kept while the config keeps its inode, mtime
    and size. None (show it empty) when git cannot read it or nothing is kept."""
    git = shutil.which("git")
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if git is None or not stat.S_ISREG(st.st_mode):
        return None
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    with _mask_lock:
        known = _git_copies.get(key)
        if known is not None and os.path.isfile(known):
            return known
    try:  # parsing only: --file reads no includes, runs nothing
        out = subprocess.run(
            [git, "config", "--file", path, "--null", "--list"],
            capture_output=True,
            timeout=5,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.defpath, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = git_format_config(out.stdout) if out.returncode == 0 else ""
    if not text:
        return None
    data = text.encode()
    with _mask_lock:
        copy = _read_only_file(f"gitconfig-{hashlib.sha256(data).hexdigest()[:24]}", data)
        _git_copies[key] = copy
    return copy


def _with_source(m: Mask) -> Mask:
    parent, _, name = m.path.rpartition("/")
    if m.dir or name != "config" or not parent.endswith("/.git"):
        return m
    return m._replace(source=_git_config_copy(m.path))


@contextlib.contextmanager
def prepare(workspace: Path, host: Host, mode: Mode, limits: SandboxLimits) -> Iterator[Prepared]:
    """Set up one call and always undo it: on exit the workspace (and only the
    workspace) gets its owners back, files the command created belong to the
    workspace's owner, the throwaway home and the cgroups are gone."""
    prep = Prepared(call_id=uuid.uuid4().hex, workspace=workspace)
    try:
        if host.mode(mode) == "fallback":
            prep.home = Path(tempfile.mkdtemp(prefix="orch-sandbox-home-"))
            if host.drops_uid:
                os.chown(prep.home, SANDBOX_UID, SANDBOX_UID)
        if host.drops_uid:
            st = workspace.lstat()
            prep.root_owner = (st.st_uid, st.st_gid)
            prep.owners = {}
            try:
                _give(workspace, SANDBOX_UID, prep.owners)
            except OSError as err:
                raise ToolInputError(
                    f"cannot hand the workspace {workspace} to the sandbox's uid {SANDBOX_UID} "
                    f"({err}); commands run as that uid so that process limits hold. Use a "
                    "workspace on a filesystem where root may chown (not a root-squashed "
                    "network share)."
                ) from err
        try:
            prep.cgroups = _make_cgroups(host.cgroups, prep.call_id, limits)
        except OSError as err:
            prep.cgroup_error = f"cannot create the call's cgroup: {err}"
        if host.mode(mode) == "bwrap":
            prep.info = os.pipe()
            if prep.cgroups:
                prep.block = os.pipe()
        yield prep
    finally:
        _sweep(prep)
        for fd in [
            *(prep.info or ()),
            *(prep.block or ()),
            *([prep.init_pidfd] if prep.init_pidfd is not None else []),
        ]:
            with contextlib.suppress(OSError):
                os.close(fd)
        for cg in prep.cgroups:
            _rmdir_cgroup(cg)
        if prep.home is not None:
            shutil.rmtree(prep.home, ignore_errors=True)
        if prep.owners is not None:
            _restore(workspace, prep.owners, prep.root_owner)


def _give(workspace: Path, uid: int, owners: dict[bytes, tuple[int, int]]) -> None:
    """chown the workspace tree to `uid`, recording every entry's owner in
    `owners` as it goes (so a failure half-way is still undone). Never follows
    a symlink, and skips files with other hard links: chowning one of those
    would hand a file outside the workspace to the sandbox."""
    top = os.fsencode(workspace)
    for dirpath, dirnames, filenames, dirfd in os.fwalk(top):
        rel = os.path.relpath(dirpath, top)
        st = os.stat(dirfd)
        owners[rel] = (st.st_uid, st.st_gid)
        if st.st_uid != uid:
            os.chown(dirfd, uid, uid)
        for name in filenames + dirnames:
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                continue  # directories: done as dirpath; symlinks: nothing to write
            owners[os.path.normpath(os.path.join(rel, name))] = (st.st_uid, st.st_gid)
            if st.st_uid != uid and st.st_nlink == 1:
                os.chown(name, uid, uid, dir_fd=dirfd, follow_symlinks=False)


def _restore(
    workspace: Path, owners: dict[bytes, tuple[int, int]], root_owner: tuple[int, int]
) -> None:
    """Give every entry its recorded owner back; entries the command made go to
    the workspace's owner. Set-id bits are cleared on every file that changes
    hands (the kernel does it on chown too): the command could have written
    the file, so it must not come back as a set-id program of the worker."""
    top = os.fsencode(workspace)
    for dirpath, dirnames, filenames, dirfd in os.fwalk(top):
        rel = os.path.relpath(dirpath, top)
        want = owners.get(rel, root_owner)
        st = os.stat(dirfd)
        if (st.st_uid, st.st_gid) != want:
            os.chown(dirfd, *want)
        for name in filenames + dirnames:
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            key = os.path.normpath(os.path.join(rel, name))
            if key not in owners and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                continue  # a hard link the command made: never chown through it
            want = owners.get(key, root_owner)
            if (st.st_uid, st.st_gid) == want:
                continue
            os.chown(name, *want, dir_fd=dirfd, follow_symlinks=False)
            setid = stat.S_ISUID | stat.S_ISGID
            if stat.S_ISREG(st.st_mode) and st.st_mode & setid:
                os.chmod(name, stat.S_IMODE(st.st_mode) & ~setid, dir_fd=dirfd)


def _rmdir_cgroup(cg: Path, timeout_s: float = 1.0) -> None:
    """rmdir is refused (EBUSY) while a member is still leaving: retry briefly."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cg.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return  # left for the next probe's clean-up (`_remove_stale`)
            time.sleep(0.001)


def _remove_stale(parent: Path) -> None:
    """Remove the cgroups of calls whose worker died before cleaning up (their
    name starts with its pid). A cgroup that still has members refuses rmdir."""
    for child in parent.iterdir():
        owner = child.name.split("-", 1)[0]
        if child.is_dir() and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(OSError):
                child.rmdir()


def _make_cgroups(cg: Cgroups, call_id: str, limits: SandboxLimits) -> list[Path]:
    made: list[Path] = []
    try:
        name = f"{os.getpid()}-{call_id}"
        if cg.version == "v2" and cg.pids:
            d = Path(cg.pids, name)
            d.mkdir()
            made.append(d)
            (d / "pids.max").write_text(str(limits.processes))
            (d / "memory.max").write_text(str(limits.memory_mb * MB))
            with contextlib.suppress(OSError):
                (d / "memory.swap.max").write_text("0")
        elif cg.version == "v1" and cg.pids and cg.memory:
            p = Path(cg.pids, name)
            p.mkdir()
            made.append(p)
            (p / "pids.max").write_text(str(limits.processes))
            m = Path(cg.memory, name)
            m.mkdir()
            made.append(m)
            (m / "memory.limit_in_bytes").write_text(str(limits.memory_mb * MB))
            with contextlib.suppress(OSError):
                (m / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_mb * MB))
    except OSError:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return made


def spawn(p: Plan, prep: Prepared) -> subprocess.Popen[bytes]:
    """Start the planned argv: stdin closed, stdout+stderr into one pipe, a
    new session. Every process of the command is in the call's cgroups from
    its first instruction: bubblewrap's init is moved in while it waits on
    its block fd, before it starts the command; the fallback joins in the
    child before exec. Without `prlimit` the child also sets the rlimits."""
    procs = [os.fsencode(cg / "cgroup.procs") for cg in prep.cgroups] if p.preexec_cgroups else []
    limits = p.rlimits if p.preexec_rlimits else ()

    def child() -> None:  # runs between fork and exec: syscalls only
        for path in procs:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        for res, value in limits:
            resource.setrlimit(res, (value, value))

    keep = tuple(
        fd
        for fd in (prep.info[1] if prep.info else None, prep.block[0] if prep.block else None)
        if fd is not None
    )
    try:
        proc = subprocess.Popen(
            p.argv,
            cwd=p.cwd,
            env=p.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            pass_fds=keep,
            preexec_fn=child if procs or limits else None,
        )
    finally:
        for fd in keep:
            os.close(fd)
        prep.info = (prep.info[0], -1) if prep.info else None
        prep.block = (-1, prep.block[1]) if prep.block else None
    if prep.info is not None:
        init = _read_child_pid(prep.info[0])
        if init is not None:
            with contextlib.suppress(OSError):
                prep.init_pidfd = os.pidfd_open(init)
            if prep.block is not None:
                for cg in prep.cgroups:
                    (cg / "cgroup.procs").write_text(str(init))
    if prep.block is not None:
        with contextlib.suppress(OSError):
            os.write(prep.block[1], b"go")
    return proc


def _read_child_pid(fd: int) -> int | None:
    """bubblewrap's --info-fd JSON, up to its closing brace (or EOF: it failed)."""
    data = b""
    while b"}" not in data:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError):
        return None


def _sweep(prep: Prepared, timeout_s: float = 5.0) -> None:
    """Make sure no process of the call is left. bubblewrap: wait for its
    sandbox init to be gone (the kernel kills and reaps everything in a pid
    namespace before its init finishes exiting; bwrap itself may exit a
    moment earlier). Then SIGKILL the cgroup's members until none is left
    (exact), or, in the fallback without a cgroup, every process whose
    environment carries the call's marker (a process can erase it)."""
    deadline = time.monotonic() + timeout_s
    if prep.init_pidfd is not None:
        ready, _, _ = select.select([prep.init_pidfd], [], [], timeout_s)
        if not ready:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(prep.init_pidfd, signal.SIGKILL)
            select.select([prep.init_pidfd], [], [], timeout_s)
        if not prep.cgroups:
            return
    marker = f"{CALL_ID_VAR}={prep.call_id}".encode()
    while True:
        pids = _cgroup_members(prep.cgroups) if prep.cgroups else _marked(marker)
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.001)


def _cgroup_members(cgroups: list[Path]) -> set[int]:
    pids: set[int] = set()
    for cg in cgroups:
        with contextlib.suppress(OSError):
            pids.update(int(x) for x in (cg / "cgroup.procs").read_text().split())
    return pids


def _marked(marker: bytes) -> set[int]:
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if marker + b"\0" in f.read() + b"\0":
                    if not _zombie(entry.name):
                        found.add(int(entry.name))
        except OSError:
            continue
    return found


def _zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True

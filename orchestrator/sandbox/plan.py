"""The pure half of the sandbox: `plan()` turns a `Request` and the probed
`Host` into the exact argv, environment, rlimits and cgroup limits of one
call, so every choice is unit-testable without running anything.

The chain, outermost first: the view's prefix (`unshare` mounting the
overlay over the workspace path in a private mount namespace), then
bubblewrap (the system read-only, the workspace path bound read-write:
the overlay, or the copy in the copy view; private /tmp, /run and /dev/shm;
toolchains read-only; every capability dropped), then `prlimit` (or
`setpriv` dropping capabilities in the fallback), then the command. The
command runs as the worker's own uid: process and memory limits come from
the call's cgroup, not from another uid.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

from orchestrator.errors import ToolInputError
from orchestrator.sandbox.host import Host, Mode
from orchestrator.sandbox.limits import SandboxLimits
from orchestrator.sandbox.masks import Mask, empty_file, mask_args
from orchestrator.sandbox.system import SYSTEM_DIRS, interpreter_homes, system_args
from orchestrator.sandbox.view import View, overlay_argv

__all__ = [
    "GIT_ENV",
    "CALL_ID_VAR",
    "SANDBOX_HOME",
    "Request",
    "Plan",
    "plan",
    "scrub_env",
    "bwrap_argv",
    "forbidden_env",
    "toolchain_path",
]

SANDBOX_HOME = "/tmp/sandbox-home"  # inside bwrap's private /tmp
CALL_ID_VAR = "SANDBOX_CALL_ID"  # marks the call's processes for the sweep
MB = 1024 * 1024

# What a root worker's command keeps of root's powers: to act on its
# workspace as the worker's own file tools do, whoever owns the files (a
# user's checkout, an archive unpacked with its owners by `tar`). Only the
# workspace and private folders are writable in the view, the policy's
# denied files are masks, and what the command changes is judged before it
# is applied; mounting, tracing, the network and the rest stay dropped.
FILE_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER")

# git reads neither the machine's nor a user's configuration, runs no hooks and
# no fsmonitor, trusts every directory, whatever the repository's own config says (command-line
# config, which GIT_CONFIG_COUNT is, wins over .git/config).
GIT_ENV: dict[str, str] = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_COUNT": "4",
    "GIT_CONFIG_KEY_0": "core.hooksPath",
    "GIT_CONFIG_VALUE_0": "/dev/null",
    "GIT_CONFIG_KEY_1": "core.fsmonitor",
    "GIT_CONFIG_VALUE_1": "false",
    "GIT_CONFIG_KEY_2": "protocol.ext.allow",
    "GIT_CONFIG_VALUE_2": "never",
    # A root worker on a user's checkout would get "dubious ownership": what
    # that check guards against (a repository's config running code) is off.
    "GIT_CONFIG_KEY_3": "safe.directory",
    "GIT_CONFIG_VALUE_3": "*",
}

# Names a step may not set: they make a program load or run code it was not
# asked to (LD_PRELOAD, BASH_ENV, exported bash functions) or undo GIT_ENV.
_FORBIDDEN_PREFIXES = ("LD_", "GIT_", "BASH_FUNC_")
_FORBIDDEN_NAMES = frozenset(
    {"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", CALL_ID_VAR}
)
# git's identity and dates: text git writes into a commit, never a path or a
# program (the sandbox has no user config, so a step committing needs them).
GIT_IDENTITY = frozenset(
    f"GIT_{who}_{what}" for who in ("AUTHOR", "COMMITTER") for what in ("NAME", "EMAIL", "DATE")
)


# -- inputs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One command to run. `view` is the call's copy-on-write view (None: the
    command writes the workspace itself, for tests of the chain alone);
    `toolchains` are directories bound read-only at their own paths, their
    `bin/` first on PATH in order."""

    argv: tuple[str, ...]
    workspace: str
    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)  # env_base, then the step's env
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    network: bool = False
    mode: Mode = "auto"
    view: View | None = None
    toolchains: tuple[str, ...] = ()
    home: str | None = None  # fallback: the throwaway HOME made for this call
    call_id: str = "call"
    info_fd: int | None = None  # bwrap writes its sandbox init's pid here
    block_fd: int | None = None  # bwrap waits on it (until the init joined the cgroups)
    standby: bool = False  # bwrap is exec'd by a standby the rlimits are set on (`standby`)
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
    # What the child must do between fork and exec (Python's preexec_fn, which
    # costs a full fork instead of a vfork): set `rlimits` when no `prlimit`
    # sets them in the chain, join the cgroups in the fallback (bwrap's init
    # joins them while it waits on `block_fd`).
    preexec_rlimits: bool = False
    preexec_cgroups: bool = False
    # bubblewrap: the rlimits are set by `prlimit(2)` on its sandbox init
    # (while it waits on `block_fd`, before it starts the command) or on the
    # standby that execs it, not by an exec of `prlimit`.
    init_rlimits: bool = False


# -- pure planning --------------------------------------------------------------------


def forbidden_env(names: Sequence[str]) -> list[str]:
    return sorted(
        n
        for n in names
        if n in _FORBIDDEN_NAMES or (n.startswith(_FORBIDDEN_PREFIXES) and n not in GIT_IDENTITY)
    )


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


def bwrap_argv(bwrap: str, req: Request, as_root: bool = False) -> list[str]:
    """bubblewrap's arguments, in mount order: the system read-only, private
    /tmp and /run, the workspace path (bound from the copy in the copy view),
    the masks, the toolchains read-only, then every capability dropped but,
    for a root worker (`as_root`), the file powers (`FILE_CAPS`)."""
    view = req.view
    source = None
    if view is not None and view.kind == "copy":
        source = str(view.copy)
    elif view is not None and view.inplace:
        source = str(view.merged)
    args = [bwrap, *system_args(req.empty_file or empty_file())]
    args += ["--perms", "1777", "--tmpfs", "/tmp", "--perms", "0755", "--tmpfs", "/run"]
    for home in interpreter_homes(req.toolchains, SYSTEM_DIRS):
        args += ["--ro-bind", home, home]
    args += ["--bind", source or req.workspace, req.workspace]
    # A toolchain is bound over its own path after the masks, so a mask below
    # one would never show: leave it out. A venv `uv` filled from its cache is
    # hundreds of files hard-linked out of the workspace, and each mask is a
    # mount (600 of them: 1.1 s of bubblewrap's start, for nothing).
    shown = [m for m in req.masks if not any(_below(m.path, t) for t in req.toolchains)]
    args += mask_args(shown, req.empty_file)
    for tool in req.toolchains:
        args += ["--ro-bind", tool, tool]
    args += ["--perms", "0777", "--dir", SANDBOX_HOME, "--dev", "/dev"]
    args += ["--perms", "1777", "--tmpfs", "/dev/shm", "--proc", "/proc"]
    args += ["--unshare-pid", "--unshare-ipc", "--cap-drop", "ALL"]
    if as_root:
        for cap in FILE_CAPS:
            args += ["--cap-add", cap]
    if not req.network:
        args.append("--unshare-net")
    if req.info_fd is not None:
        args += ["--info-fd", str(req.info_fd)]
    if req.block_fd is not None:
        args += ["--block-fd", str(req.block_fd)]
    args += ["--die-with-parent", "--new-session", "--chdir", req.cwd, "--"]
    return args


def _below(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def setpriv_argv(setpriv: str) -> list[str]:
    """The fallback's privilege drop: the same uid, no capabilities (an empty
    bounding set: a root worker's command cannot regain them by exec), no
    set-id elevation. What it execs must be a trusted program (`prlimit` or
    `env`): setpriv keeps its own capabilities until that execve."""
    return [
        setpriv,
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]


def toolchain_path(toolchains: Sequence[str], path: str) -> str:
    """Each toolchain's `bin/` (or the folder itself when it has no `bin/`
    part named), in order, before `path`."""
    bins = [t if t.rstrip("/").endswith("/bin") else f"{t.rstrip('/')}/bin" for t in toolchains]
    return ":".join([*bins, path]) if bins else path


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
    cg = host.cgroups
    cgroup_limits: dict[str, int] = {}
    if cg.pids:
        cgroup_limits["pids"] = req.limits.processes
    if cg.memory:
        cgroup_limits["memory"] = req.limits.memory_mb * MB
    limits = rlimits(req.limits, cgroup_limits)
    init_rlimits = mode == "bwrap" and (req.block_fd is not None or req.standby)
    chain = prlimit_argv(host.prlimit, limits) if host.prlimit and not init_rlimits else []
    cwd = req.cwd
    if mode == "bwrap":
        assert host.bwrap is not None
        home = SANDBOX_HOME
        argv = bwrap_argv(host.bwrap, req, host.is_root) + chain + list(req.argv)
    else:
        if req.home is None:
            raise ValueError("the fallback sandbox needs a throwaway home directory")
        if host.is_root and host.setpriv:
            if not chain:
                chain = [host.env_tool, "--"]
                if "=" in req.argv[0]:
                    raise ToolInputError(
                        f"program {req.argv[0]!r} contains '=', which `env` would "
                        "take for a variable; call it by a path without '='."
                    )
            chain = setpriv_argv(host.setpriv) + chain
        home = req.home
        argv = chain + list(req.argv)
        if req.view is not None and req.view.kind == "copy":
            # Nothing can be mounted: the command runs in the copy, at its own path.
            rel = PurePosixPath(req.cwd).relative_to(req.workspace)
            cwd = str(PurePosixPath(req.view.copy, rel))
    if req.view is not None and req.view.kind == "overlay" and not req.view.inplace:
        if host.unshare is None:
            raise ValueError("the overlay view needs `unshare`")
        prefix = overlay_argv(
            host.unshare,
            host.shell,
            req.workspace,
            req.view,
            host.is_root,
            "" if mode == "bwrap" else cwd,
        )
        argv = prefix + argv
    env = scrub_env(toolchain_path(req.toolchains, host.path), home, req.env, req.call_id)
    return Plan(
        mode=mode,
        argv=argv,
        env=env,
        cwd=cwd,
        rlimits=limits,
        cgroup_limits=cgroup_limits,
        preexec_rlimits=host.prlimit is None and not init_rlimits,
        init_rlimits=init_rlimits,
        preexec_cgroups=bool(cgroup_limits) and (mode == "fallback" or req.block_fd is None),
    )

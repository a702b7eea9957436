"""What of the host a sandboxed command sees besides its workspace: the
system's programs and libraries and a world-readable `/etc`, read-only, and
nothing else.

Binding all of `/` read-only kept writes in but let every command read what
the worker can: the event store and its key file under the state folder,
other jobs' workspaces and kept changesets, `~/.ssh`, `/etc/shadow` (a root
worker's command keeps root's uid: owner permissions still apply). So the
view is an allow-list: the system folders that exist (a merged-/usr link
stays a link), the few parts of `/sys` runtimes read, `/etc` without what only its owner or group may read (files
shown empty, folders as empty read-only tmpfs), and what the call adds
itself (the workspace, toolchains, private /tmp). Any other host folder a
command needs (a toolchain, data) is named in the job's or policy's
`toolchains:`.
"""

from __future__ import annotations

import configparser
import os
import stat
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

__all__ = [
    "SYSTEM_DIRS",
    "SYSFS_SHOWN",
    "system_args",
    "interpreter_homes",
    "view_roots",
    "in_view",
]

# Read-only, at their own paths, when they exist.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# Of /sys, what runtimes read to size themselves (CPUs and NUMA nodes, the
# cgroup limits a JVM, Go or Node reads, huge-page settings allocators read).
# The rest is not shown: a root worker's command keeps uid 0, so owner
# permissions would let it read root-only files there (firmware and ACPI
# tables, the machine's serial numbers and UUID).
SYSFS_SHOWN = (
    "/sys/devices/system/cpu",
    "/sys/devices/system/node",
    "/sys/fs/cgroup",
    "/sys/kernel/mm/transparent_hugepage",
)
_ETC_WALK_LIMIT = 20_000  # entries; past it the rest of /etc is not looked at


def system_args(empty_file: str) -> list[str]:
    """bubblewrap's arguments for the host's part of the view: each system
    folder read-only (or its link), then `/etc`'s private entries hidden
    (a file: `empty_file` bound over it; a folder: an empty read-only tmpfs),
    and a private `/var/tmp`."""
    return list(_system_args(empty_file))


@lru_cache(maxsize=4)
def _system_args(empty_file: str) -> tuple[str, ...]:
    args: list[str] = []
    for kind, a, b in _system_entries():
        args += [f"--{kind}", a, b]
    for path, is_dir in _private_etc():
        if is_dir:
            args += ["--perms", "0555", "--tmpfs", path, "--remount-ro", path]
        else:
            args += ["--ro-bind", empty_file, path]
    args += ["--perms", "1777", "--tmpfs", "/var/tmp"]
    return tuple(args)


@lru_cache(maxsize=1)
def _system_entries() -> tuple[tuple[str, str, str], ...]:
    out = []
    for d in (*SYSTEM_DIRS, *SYSFS_SHOWN):
        try:
            st = os.lstat(d)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode) and d in SYSTEM_DIRS:
            out.append(("symlink", os.readlink(d), d))
        elif stat.S_ISDIR(st.st_mode):
            out.append(("ro-bind", d, d))
    return tuple(out)


@lru_cache(maxsize=1)
def _private_etc() -> tuple[tuple[str, bool], ...]:
    """`/etc` entries others may not read (a folder: not enter), topmost only:
    shadow files, private keys, credentials a package keeps there."""
    return tuple(private_entries("/etc", _ETC_WALK_LIMIT))


def private_entries(top: str, limit: int) -> list[tuple[str, bool]]:
    """(path, is folder) of the entries below `top` that are not readable by
    others; nothing below a folder listed. Symlinks are not followed."""
    out: list[tuple[str, bool]] = []
    seen = 0
    stack = [top]
    while stack and seen < limit:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            seen += 1
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if st.st_mode & 0o005 != 0o005:
                    out.append((e.path, True))
                else:
                    stack.append(e.path)
            elif stat.S_ISREG(st.st_mode) and not st.st_mode & 0o004:
                out.append((e.path, False))
    return sorted(out)


def interpreter_homes(toolchains: Iterable[str], shown: Sequence[str]) -> tuple[str, ...]:
    """The folders a toolchain's interpreter lives in when they are not in the
    view: a venv's `bin/python` is a link to its base installation (pyvenv.cfg
    `home`, e.g. a pyenv version), which must be shown for it to start."""
    homes: list[str] = []
    for tool in toolchains:
        root = Path(tool)
        if root.name == "bin":
            root = root.parent
        for base in _venv_bases(root):
            if not any(_below(base, s) for s in (*shown, *toolchains, *homes)):
                homes.append(base)
    return tuple(homes)


def _venv_bases(root: Path) -> list[str]:
    """The installation a venv at `root` runs (its prefix), if it is one."""
    cfg = root / "pyvenv.cfg"
    out: list[str] = []
    try:
        text = cfg.read_text(errors="replace")
    except OSError:
        return out
    parser = configparser.ConfigParser()
    try:
        parser.read_string("[venv]\n" + text)
    except configparser.Error:
        return out
    home = parser.get("venv", "home", fallback="").strip()
    candidates = [home] if home else []
    for name in ("python", "python3"):
        exe = root / "bin" / name
        if exe.is_symlink():
            candidates.append(str(exe.resolve().parent))
    for c in candidates:
        p = Path(c)
        prefix = p.parent if p.name == "bin" else p
        if prefix.is_dir() and str(prefix) != "/":
            out.append(str(prefix.resolve()))
    return out


def _below(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def view_roots(workspace: str, toolchains: Sequence[str]) -> tuple[str, ...]:
    """The host folders a command sees at their own paths: the system's, the
    workspace, the toolchains and their interpreters' installations."""
    shown = tuple(b for _, _, b in _system_entries())
    return (*shown, workspace, *toolchains, *interpreter_homes(toolchains, SYSTEM_DIRS))


def in_view(path: str, roots: Sequence[str]) -> bool:
    """Whether the host path `path` is visible at its own path in the view."""
    return any(_below(path, r) for r in roots)

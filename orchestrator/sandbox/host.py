"""What the machine offers the sandbox, read once per process (`probe()`):
bubblewrap and whether it can start its namespaces, the cgroups a call can
get, the tools in the chain (`prlimit`, `setpriv`, `unshare`), and whether
an overlay can be mounted over a workspace (the copy-on-write view)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from orchestrator.errors import ToolInputError
from orchestrator.sandbox.view import overlay_problem, remove_stale_views

__all__ = ["Cgroups", "Host", "Mode", "ViewKind", "probe", "remove_stale"]

Mode = Literal["auto", "bwrap", "fallback"]
ViewKind = Literal["auto", "overlay", "copy"]


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
    unshare: str | None = None
    shell: str = "/bin/sh"
    # Why no overlay can be mounted over a workspace (no `unshare`, not root
    # and no user namespaces, a kernel without overlayfs); None when it can.
    overlay_problem: str | None = "not probed"

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

    def view(self, wanted: ViewKind = "auto") -> Literal["overlay", "copy"]:
        """How the command's writes are kept apart from the workspace: an
        overlay when this machine can mount one, else a private copy."""
        if wanted == "copy" or (wanted == "auto" and self.overlay_problem is not None):
            return "copy"
        if self.overlay_problem is not None:
            raise ToolInputError(
                f"the overlay view was asked for but cannot be mounted here: "
                f"{self.overlay_problem}. Let the sandbox choose its view (it copies "
                "the workspace instead)."
            )
        return "overlay"


_CG_PARENT = "orchestrator-sandbox"


@lru_cache(maxsize=1)
def probe() -> Host:
    """Read the machine once per process: tools, versions, uid, cgroups,
    whether an overlay view can be mounted."""
    bwrap = shutil.which("bwrap")
    problem = _bwrap_problem(bwrap) if bwrap else None
    if problem is not None:
        bwrap = None
    setpriv = shutil.which("setpriv")
    unshare = shutil.which("unshare")
    shell = shutil.which("sh") or "/bin/sh"
    is_root = os.geteuid() == 0
    remove_stale_views()
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
        path=os.environ.get("PATH") or Host.path,
        fast_migration=_fast_migration(),
        unshare=unshare,
        shell=shell,
        overlay_problem=overlay_problem(unshare, shell, is_root, tempfile.gettempdir()),
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
    remove_stale(parent)


def remove_stale(parent: Path) -> None:
    """Remove the cgroups of calls whose worker died before cleaning up (their
    name starts with its pid). A cgroup that still has members refuses rmdir."""
    for child in parent.iterdir():
        owner = child.name.split("-", 1)[0]
        if child.is_dir() and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(OSError):
                child.rmdir()

"""The copy-on-write view a command runs against, so the workspace itself is
never written during a call.

- **overlay**: in a private mount namespace (`unshare --mount`, plus
  `--user --map-root-user` for a worker that is not root), an overlay is
  mounted over the workspace path with the workspace as its lower layer and
  an upper and work directory in a private per-call folder outside it. The
  command (bubblewrap binds the workspace path as usual) sees a writable
  tree; every write lands in the upper directory, which afterwards holds
  exactly the changeset. Cost: one mount, whatever the workspace's size.
- **copy**: where no overlay can be mounted, the workspace is copied (no
  hard links kept, metadata kept) into the private folder and the command
  runs against the copy; comparing it with the workspace gives the same
  changeset. Cost grows with the workspace.

A worker killed mid-call leaves only its private folder behind (named after
its pid; `remove_stale_views()` removes those of dead workers): the
workspace was never opened for writing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from orchestrator.sandbox import mountns

__all__ = [
    "View",
    "open_view",
    "close_view",
    "settle",
    "stable_mounts",
    "overlay_argv",
    "overlay_problem",
    "overlay_refused",
    "remove_stale_views",
    "MOUNTED",
]

_PREFIX = "orch-sandbox-view-"
MOUNTED = "mounted"  # written in the view's folder once the overlay is up

# $1 workspace, $2 upper, $3 work, $4 the marker file, $5 more options, $6
# the command's cwd to enter again when no bubblewrap does (the one inherited
# is below the overlay), or empty,
# $7 mount(8) by its path (the step's env may set PATH); then the command.
# The marker tells a failed mount (nothing ran) from a command's own exit code.
_MOUNT_SCRIPT = (
    '"$7" -t overlay -o "lowerdir=$1,upperdir=$2,workdir=$3$5" overlay "$1" '
    '&& : > "$4" && { [ -z "$6" ] || { cd -- "$6" && unset OLDPWD; }; } && shift 7 && exec "$@"'
)
MOUNT = shutil.which("mount") or "/bin/mount"
# What the mount must not do: record renames as redirects, copy metadata
# only, or keep an index; the upper directory must hold plain files.
_OPTIONS = ",redirect_dir=off,metacopy=off,index=off"
_USER_OPTIONS = ",userxattr"  # unprivileged overlay (kernel 5.11+): user.overlay.* xattrs


class Usage(NamedTuple):
    """What a view holds: bytes, and entries (files, folders, links)."""

    bytes: int
    entries: int


@dataclass(frozen=True)
class View:
    """One call's private folder (mode 0700, outside the workspace) and what
    is in it: the overlay's upper and work directories, or the copy."""

    kind: Literal["overlay", "copy"]
    root: Path
    started_ns: int  # copy: a file in the copy whose ctime is older is unchanged
    base: Usage = Usage(0, 0)  # copy: what the copy held before the command ran
    # overlay: mounted by the worker at `merged`, in its own namespace
    # (`mountns`), for bubblewrap to bind; False: the chain mounts it.
    inplace: bool = False
    merged_in: str = ""  # the folder `merged` is in (`mountns.mounts_folder`)

    @property
    def merged(self) -> Path:
        return Path(self.merged_in, self.root.name)

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def copy(self) -> Path:
        return self.root / "copy"

    @property
    def marker(self) -> Path:
        return self.root / MOUNTED


def overlay_argv(
    unshare: str, shell: str, workspace: str, view: View, as_root: bool, cwd: str = ""
) -> list[str]:
    """The prefix that mounts the overlay in a private mount namespace and
    then execs the rest of the argv in it."""
    user = [] if as_root else ["--user", "--map-root-user"]
    options = _OPTIONS if as_root else _USER_OPTIONS
    return [
        unshare,
        *user,
        "--mount",
        "--propagation",
        "private",
        "--",
        shell,
        "-c",
        _MOUNT_SCRIPT,
        "sh",
        workspace,
        str(view.upper),
        str(view.work),
        str(view.marker),
        options,
        cwd,
        MOUNT,
    ]


def open_view(
    workspace: Path,
    kind: Literal["overlay", "copy"],
    base: str | None = None,
    inplace: bool = False,
) -> View:
    """Make the call's private folder: upper+work for an overlay (with
    `inplace`, also mounted here at `merged`, in the worker's own mount
    namespace, when it can be), or a copy of the workspace (symlinks as
    symlinks, hard links as separate files)."""
    mounts = None
    if inplace and mountns.private_namespace(_mounts_folder(base)) is None:
        mounts = mountns.mounts_folder()
    root = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base))
    if kind == "overlay":
        view = View("overlay", root, time.time_ns(), merged_in=mounts or "")
        view.upper.mkdir()
        view.work.mkdir()
        if mounts:
            view.merged.mkdir()
            try:
                mountns.mount_overlay(
                    str(workspace), str(view.upper), str(view.work), str(view.merged), _OPTIONS
                )
            except OSError:
                view.merged.rmdir()
                return dataclasses.replace(view, merged_in="")  # the chain mounts it
            return dataclasses.replace(view, inplace=True)
        return view
    try:
        shutil.copytree(workspace, root / "copy", symlinks=True, copy_function=shutil.copy2)
    except (OSError, shutil.Error):
        shutil.rmtree(root, ignore_errors=True)
        raise
    # ctime cannot be set: anything the command touches gets a later one.
    return View("copy", root, time.time_ns(), _usage(root / "copy"))


def disk_used(view: View) -> Usage:
    """What the command has written into its view so far: the overlay's
    upper directory (every file it made or changed, every delete), or what
    the copy grew by. A file counts its size or its blocks, whichever is
    more (the changeset reads a sparse file whole); entries count apart, as
    a million empty files hold no bytes but exhaust inodes, the worker's
    memory when the changeset is read and the log when it is recorded."""
    if view.kind == "overlay":
        return _usage(view.upper)
    now = _usage(view.copy)
    return Usage(max(0, now.bytes - view.base.bytes), max(0, now.entries - view.base.entries))


def _usage(top: Path) -> Usage:
    total = count = 0
    stack = [str(top)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        count += len(entries)
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += max(st.st_blocks * 512, st.st_size if stat.S_ISREG(st.st_mode) else 0)
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    return Usage(total, count)


def close_view(view: View) -> None:
    """Take the view down off the call's critical path: a thread of the
    worker unmounts it (the kernel waits for an RCU grace period there) when
    no call is between starting bubblewrap and its end (`stable_mounts`:
    bubblewrap's `--ro-bind / /` copies the worker's mounts and fails on
    one unmounted meanwhile), and removes its folder. The call's changeset
    was read before; nothing reads the view afterwards. A worker gone first
    leaves the folder to `remove_stale_views()`, and no mount (its namespace
    went with it)."""
    _teardown.put(view)
    if _reaper.get(os.getpid()) is None:
        mountns.private_namespace(_mounts_folder(None))  # decided while this is the only thread
        thread = threading.Thread(target=_reap, name="sandbox-view-reaper", daemon=True)
        _reaper[os.getpid()] = thread
        thread.start()


def _mounts_folder(base: str | None) -> str:
    """This process's folder for overlays it mounts itself (removed with the
    other leftovers of a dead worker by `remove_stale_views`)."""
    return os.path.join(base or tempfile.gettempdir(), f"{_PREFIX}{os.getpid()}-mounts")


def settle(timeout_s: float = 10.0) -> None:
    """Wait until every view closed so far is taken down (tests; exit)."""
    done = threading.Event()
    _teardown.put(done)
    if _reaper.get(os.getpid()) is not None:
        done.wait(timeout_s)


_teardown: queue.SimpleQueue[View | threading.Event] = queue.SimpleQueue()
_reaper: dict[int, threading.Thread] = {}  # pid -> its thread (a forked child starts its own)


_calls = threading.Condition()
_running = [0]  # calls of this process between starting bubblewrap and their end


@contextlib.contextmanager
def stable_mounts() -> Iterator[None]:
    """Hold off the view thread's unmounts while bubblewrap starts and runs
    (it waits for one in progress to finish)."""
    with _calls:
        _running[0] += 1
    try:
        yield
    finally:
        with _calls:
            _running[0] -= 1
            _calls.notify_all()


def _reap() -> None:
    while True:
        item = _teardown.get()
        if isinstance(item, threading.Event):
            item.set()
            continue
        if item.inplace:
            with _calls:
                while _running[0]:
                    _calls.wait()
                mountns.unmount(str(item.merged))
            with contextlib.suppress(OSError):
                item.merged.rmdir()
        shutil.rmtree(item.root, ignore_errors=True)


def remove_stale_views(base: str | None = None) -> None:
    """Remove the private folders of workers that died mid-call."""
    top = base or tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.scandir(top):
            if not entry.name.startswith(_PREFIX):
                continue
            owner = entry.name[len(_PREFIX) :].split("-", 1)[0]
            if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
                shutil.rmtree(entry.path, ignore_errors=True)


def overlay_problem(unshare: str | None, shell: str, as_root: bool, base: str) -> str | None:
    """Why no overlay can be mounted here (None: it can): tried once on a
    throwaway lower directory in `base`, where the upper directories go."""
    if unshare is None:
        return "`unshare` (util-linux) is not installed"
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        lower = Path(tmp, "lower")
        lower.mkdir()
        return overlay_refused(unshare, shell, str(lower), as_root, base)


_refused: dict[int, str | None] = {}


def overlay_refused(
    unshare: str, shell: str, workspace: str, as_root: bool, base: str | None = None
) -> str | None:
    """Why an overlay cannot sit over `workspace` (None: it can), tried once per
    filesystem: some (another overlay's upper, FUSE, NFS) refuse to be a
    lower layer, and paths with `,` or `:` cannot be named in the options."""
    if any(c in workspace for c in ",:"):
        return f"the path {workspace} holds ',' or ':', which overlay options cannot name"
    dev = os.stat(workspace).st_dev
    if dev in _refused:
        return _refused[dev]
    view = open_view(Path(workspace), "overlay", base)
    try:
        argv = overlay_argv(unshare, shell, workspace, view, as_root) + ["true"]
        done = subprocess.run(argv, capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        why = None
        if done.returncode != 0 or not view.marker.exists():
            msg = done.stderr.decode(errors="replace").strip().splitlines()
            why = f"mounting an overlay failed: {msg[-1] if msg else done.returncode}"
    except (OSError, subprocess.TimeoutExpired) as err:
        why = f"mounting an overlay failed: {err}"
    finally:
        close_view(view)
    _refused[dev] = why
    return why

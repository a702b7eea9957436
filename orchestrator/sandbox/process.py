"""The process half of the sandbox: set up a call (`prepare`: the view,
cgroups, a throwaway home), start the planned argv (`spawn`), read what it
changed (`changes`), and make sure nothing of it is left running (`_sweep`).
`orchestrator.tools.shell` supervises the process in between.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator.errors import InfraUnavailable, ToolInputError
from orchestrator.sandbox import aftercall, nextview, standby
from orchestrator.sandbox.changeset import Changeset, from_copy, from_upper
from orchestrator.sandbox.host import Cgroups, Host, Mode, ViewKind
from orchestrator.sandbox.limits import SandboxLimits
from orchestrator.sandbox.plan import CALL_ID_VAR, MB, Plan
from orchestrator.sandbox.standby import Standby
from orchestrator.sandbox.view import (
    Usage,
    View,
    close_view,
    disk_used,
    open_view,
    overlay_refused,
)

__all__ = ["Prepared", "prepare", "spawn", "changes", "view_kind", "written"]


@dataclass
class Prepared:
    """What a call set up and `prepare()` undoes: cgroups, throwaway home,
    the copy-on-write view."""

    call_id: str
    cgroups: list[Path] = field(default_factory=list)
    home: Path | None = None
    view: View | None = None
    cgroup_error: str | None = None  # set: run with rlimits only
    info: tuple[int, int] | None = None  # pipe (read, write): bwrap's --info-fd
    block: tuple[int, int] | None = None  # pipe (read, write): bwrap's --block-fd
    init_pidfd: int | None = None  # bwrap's sandbox init, once started
    standby: Standby | None = None  # the process that becomes bwrap, in the cgroups already
    started: bool = False
    emptied: bool = False  # a sweep found nothing of the call left (none can come back)


@contextlib.contextmanager
def prepare(
    workspace: Path,
    host: Host,
    mode: Mode,
    limits: SandboxLimits,
    view: ViewKind = "auto",
    view_base: str | None = None,
) -> Iterator[Prepared]:
    """Set up one call and always undo it: the view (an overlay's upper and
    work directories, or a copy of the workspace, in a private folder under
    `view_base`), the cgroups, the throwaway home. Nothing here writes the
    workspace or changes who owns it."""
    prep = Prepared(call_id=uuid.uuid4().hex)
    bwrap = host.mode(mode) == "bwrap"
    inplace = bwrap and host.is_root
    parents = tuple(p for p in (host.cgroups.pids, host.cgroups.memory) if p)
    try:
        if host.mode(mode) == "fallback":
            prep.home = Path(tempfile.mkdtemp(prefix="orch-sandbox-home-"))
        kind = view_kind(host, view, workspace)
        if kind == "overlay":
            prep.view = nextview.take(workspace, view_base, inplace)
        if prep.view is None:
            prep.view = open_view(workspace, kind, view_base, inplace)
        if bwrap and host.cgroups.version:
            _take_standby(prep, host.cgroups, parents, limits)
        if prep.standby is None:
            try:
                prep.cgroups = _make_cgroups(host.cgroups, prep.call_id)
                _limit(host.cgroups, prep.cgroups, limits, _MONITOR if bwrap else 0)
            except OSError as err:
                _remove_cgroups(prep.cgroups)
                prep.cgroups = []
                prep.cgroup_error = f"cannot create the call's cgroup: {err}"
            if bwrap:
                prep.info = os.pipe()
                prep.block = os.pipe()  # the init joins the cgroups and gets its rlimits
        yield prep
    finally:
        if prep.standby is not None and not prep.started:
            prep.standby.discard()
        if not prep.emptied:
            _sweep(prep)
        for fd in [
            *(prep.info or ()),
            *(prep.block or ()),
            *([prep.init_pidfd] if prep.init_pidfd is not None else []),
        ]:
            with contextlib.suppress(OSError):
                os.close(fd)
        # Emptied above: removing them, the home and the view waits for no one.
        aftercall.later(functools.partial(_remove_leftovers, list(prep.cgroups), prep.home))
        if prep.view is not None:
            close_view(prep.view)
            if prep.view.kind == "overlay":
                nextview.refill(workspace, view_base, inplace)
        if bwrap and host.cgroups.version:
            standby.refill(parents, functools.partial(_limited, host.cgroups, limits), limits)


def _remove_leftovers(cgroups: list[Path], home: Path | None) -> None:
    """A finished call's empty cgroups and throwaway home (`aftercall`)."""
    for cg in cgroups:
        _rmdir_cgroup(cg)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


def view_kind(host: Host, wanted: ViewKind, workspace: Path) -> Literal["overlay", "copy"]:
    """The view this workspace gets: an overlay when the machine and the
    workspace's filesystem allow one, else the copy (unless asked for)."""
    kind = host.view(wanted)
    if kind == "overlay" and host.unshare is not None:
        why = overlay_refused(host.unshare, host.shell, str(workspace), host.is_root)
        if why is None:
            return "overlay"
        if wanted == "overlay":
            raise ToolInputError(
                f"the overlay view was asked for but {workspace} cannot be its lower "
                f"layer: {why}. Let the sandbox choose its view (it copies the "
                "workspace instead)."
            )
    return "copy"


def changes(prep: Prepared, workspace: Path) -> Changeset:
    """What the command changed, read from the call's view (still open) once
    nothing of the call runs: a leftover process (a daemon, in the fallback)
    could otherwise write a file while it is read, and a torn read would be
    recorded and applied. `prepare`'s exit then needs no sweep."""
    prep.emptied = _sweep(prep)
    view = prep.view
    if view is None:
        return Changeset()
    if view.kind == "overlay":
        if not view.inplace and not view.marker.exists():
            raise InfraUnavailable(
                f"the overlay over {workspace} could not be mounted, so the command "
                "did not run. Run `orchestrator doctor` to see which view the "
                "sandbox can use."
            )
        return from_upper(view.upper, workspace)
    return from_copy(view.copy, workspace, view.started_ns)


def written(prep: Prepared) -> Usage:
    """What the command has written into its view so far (bytes, entries)."""
    return Usage(0, 0) if prep.view is None else disk_used(prep.view)


def limit_hits(prep: Prepared) -> dict[str, int]:
    """What the call's cgroups counted against their limits, read before
    they are removed: `forks_refused` (pids.events max) and `oom_kills`;
    only when one is counted, `processes_peak` and `memory_peak` (bytes), which
    the error reports. Missing files count nothing."""
    found: dict[str, int] = {}
    _count(prep.cgroups, found, _EVENTS)
    if found.get("forks_refused") or found.get("oom_kills"):
        _count(prep.cgroups, found, _PEAKS)  # only what says how far past it went
    return found


_Counter = tuple[str, str, str | None]  # file, key, the field of the file holding it
# The files of each of a call's cgroups, by how many it has: v2's one, v1's
# pids and memory cgroups. Only these are opened (the call's path reads them).
_EVENTS: dict[int, tuple[tuple[_Counter, ...], ...]] = {
    1: ((("pids.events", "forks_refused", "max"), ("memory.events", "oom_kills", "oom_kill")),),
    2: (
        (("pids.events", "forks_refused", "max"),),
        (("memory.oom_control", "oom_kills", "oom_kill"),),
    ),
}
_PEAKS: dict[int, tuple[tuple[_Counter, ...], ...]] = {
    1: ((("pids.peak", "processes_peak", None), ("memory.peak", "memory_peak", None)),),
    2: (
        (("pids.peak", "processes_peak", None),),
        (("memory.max_usage_in_bytes", "memory_peak", None),),
    ),
}


def _count(
    cgroups: list[Path],
    found: dict[str, int],
    files: dict[int, tuple[tuple[_Counter, ...], ...]],
) -> None:
    for cg, counters in zip(cgroups, files.get(len(cgroups), ()), strict=False):
        for name, key, field_ in counters:
            try:
                text = _read(f"{cg}/{name}")
            except OSError:
                continue
            for line in text.splitlines():
                words = line.split()
                if field_ is None and len(words) == 1 and words[0].isdigit():
                    found[key] = max(found.get(key, 0), int(words[0]))
                elif len(words) == 2 and words[0] == field_ and words[1].isdigit():
                    found[key] = max(found.get(key, 0), int(words[1]))


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


_MONITOR = 1  # bubblewrap's own process is in the call's cgroups too, beside the command's


def _make_cgroups(cg: Cgroups, call_id: str) -> list[Path]:
    """The call's empty cgroups (`<worker pid>-<call_id>`), or OSError."""
    made: list[Path] = []
    name = f"{os.getpid()}-{call_id}"
    parents = [cg.pids] if cg.version == "v2" else [cg.pids, cg.memory]
    try:
        for parent in parents:
            if parent:
                d = Path(parent, name)
                d.mkdir()
                made.append(d)
    except OSError:
        _remove_cgroups(made)
        raise
    return made


def _limited(cg: Cgroups, limits: SandboxLimits, call_id: str) -> list[Path]:
    """A standby's cgroups, with `limits` written (or OSError)."""
    made = _make_cgroups(cg, call_id)
    try:
        _limit(cg, made, limits, _MONITOR)
    except OSError:
        _remove_cgroups(made)
        raise
    return made


def _read(path: str | Path) -> str:
    """A cgroup file's text, read to its end without a text layer (the
    call's path reads several), or OSError."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def _write(path: str | Path, text: str) -> None:
    """Write one value into a cgroup file (one write), or OSError."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _remove_cgroups(made: list[Path]) -> None:
    for d in reversed(made):
        with contextlib.suppress(OSError):
            d.rmdir()


def _limit(
    cg: Cgroups, made: list[Path], limits: SandboxLimits, extra: int, again: bool = False
) -> None:
    """Write the call's limits into its cgroups (`extra`: processes of ours
    beside the command's, bubblewrap's own). `again`: they hold other
    limits already (v1 refuses a memory limit above the memory+swap one,
    so that one is written first too)."""
    if not made:
        return
    memory = str(limits.memory_mb * MB)
    _write(f"{made[0]}/pids.max", str(limits.processes + extra))
    if cg.version == "v2":
        _write(f"{made[0]}/memory.max", memory)
        with contextlib.suppress(OSError):
            _write(f"{made[0]}/memory.swap.max", "0")
    else:
        if again:
            with contextlib.suppress(OSError):  # refused when lower than the memory limit
                _write(f"{made[1]}/memory.memsw.limit_in_bytes", memory)
        _write(f"{made[1]}/memory.limit_in_bytes", memory)
        with contextlib.suppress(OSError):
            _write(f"{made[1]}/memory.memsw.limit_in_bytes", memory)


def _take_standby(
    prep: Prepared, cg: Cgroups, parents: tuple[str, ...], limits: SandboxLimits
) -> None:
    """Run the call in this worker's standby, when one is ready (`standby`)."""
    ready = standby.take(parents)
    if ready is None:
        return
    try:
        if ready.limited != limits:  # written when it was made: the last call's
            _limit(cg, ready.cgroups, limits, _MONITOR, again=ready.limited is not None)
    except OSError:
        ready.discard()
        _remove_cgroups(ready.cgroups)
        return
    prep.standby, prep.call_id, prep.cgroups = ready, ready.call_id, ready.cgroups


def spawn(p: Plan, prep: Prepared) -> subprocess.Popen[bytes]:
    """Start the planned argv: stdin closed, stdout+stderr into one pipe, a
    process group of its own (bubblewrap, whose `--new-session` puts the
    command in a session of its own), or a new session (the fallback). Every process of the command is in the call's cgroups from
    its first instruction: bubblewrap's init is moved in while it waits on
    its block fd, before it starts the command; the fallback joins in the
    child before exec. bubblewrap's init also gets the rlimits then
    (`prlimit(2)`); in the fallback, without `prlimit`, the child sets them."""
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

    if prep.standby is not None:
        return _start_standby(p, prep, prep.standby)
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
            **_group(p.mode),
            close_fds=True,
            pass_fds=keep,
            preexec_fn=child if procs or limits else None,
        )
    finally:
        for fd in keep:
            os.close(fd)
        prep.info = (prep.info[0], -1) if prep.info else None
        prep.block = (-1, prep.block[1]) if prep.block else None
    if prep.block is not None:
        # Move bubblewrap itself at once: the kernel's wait for a grace period
        # before the first migration then overlaps bwrap's own set-up, and the
        # init's move below (it may have been cloned before this) is cheap.
        for cg in prep.cgroups:
            with contextlib.suppress(OSError):
                (cg / "cgroup.procs").write_text(str(proc.pid))
    prep.started = True
    _release_init(p, prep, proc)
    return proc


def _group(mode: str) -> dict[str, Any]:
    """How a call's first process is set apart from the worker's signals
    (`killpg` of its pid reaches what is left of it): bubblewrap gets a
    process group and stays in the worker's session, so it and its init are
    not scheduled as a session of their own (a new session is a new
    autogroup with `sched_autogroup_enabled`: 0.5-1.5 ms more per call on a
    loaded machine, measured here); the command is in a session of its own
    anyway (`--new-session`). The fallback has no bubblewrap to do that: its
    command gets the new session (no controlling terminal to inject into)."""
    return {"process_group": 0} if mode == "bwrap" else {"start_new_session": True}


def _start_standby(p: Plan, prep: Prepared, ready: Standby) -> subprocess.Popen[bytes]:
    """The standby gets the rlimits and becomes bubblewrap; everything it
    forks starts in the cgroups (the sweep empties them: no init to wait for)."""
    prep.started = True
    try:
        for res, value in p.rlimits:
            resource.prlimit(ready.proc.pid, res, (value, value))
    except OSError:  # never run the command unlimited
        ready.discard()
        raise
    ready.start(p.argv, p.env, p.cwd)
    return ready.proc


def _release_init(p: Plan, prep: Prepared, proc: subprocess.Popen[bytes]) -> None:
    """Once bubblewrap's init waits on its block fd: move it into the call's
    cgroups, set its rlimits, let it go."""
    if prep.info is not None:
        init = _read_child_pid(prep.info[0])
        if init is not None:
            with contextlib.suppress(OSError):
                prep.init_pidfd = os.pidfd_open(init)
            if prep.block is not None:
                for cg in prep.cgroups:
                    (cg / "cgroup.procs").write_text(str(init))
            if p.init_rlimits:
                try:
                    for res, value in p.rlimits:
                        resource.prlimit(init, res, (value, value))
                except OSError:  # never run the command unlimited
                    proc.kill()
                    proc.wait()
                    raise
    if prep.block is not None:
        with contextlib.suppress(OSError):
            os.write(prep.block[1], b"go")


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


def _sweep(prep: Prepared, timeout_s: float = 5.0) -> bool:
    """Make sure no process of the call is left. bubblewrap: wait for its
    sandbox init to be gone (the kernel kills and reaps everything in a pid
    namespace before its init finishes exiting; bwrap itself may exit a
    moment earlier). Then SIGKILL the cgroup's members until none is left
    (exact), or, in the fallback without a cgroup, every process whose
    environment carries the call's marker (a process can erase it).
    True when it saw none left (a cgroup stays empty: nothing of the
    sandbox can write `cgroup.procs`); False past the timeout."""
    deadline = time.monotonic() + timeout_s
    if prep.init_pidfd is not None:
        ready, _, _ = select.select([prep.init_pidfd], [], [], timeout_s)
        if not ready:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(prep.init_pidfd, signal.SIGKILL)
            select.select([prep.init_pidfd], [], [], timeout_s)
        if not prep.cgroups:
            return True  # its pid namespace died with it
    marker = f"{CALL_ID_VAR}={prep.call_id}".encode()
    killed: set[int] = set()
    while True:
        pids = _cgroup_members(prep.cgroups) if prep.cgroups else _marked(marker)
        # A killed process drops its environment before it is a zombie: wait
        # for each to finish dying, so none is still running when we return.
        exiting = {pid for pid in killed - pids if not _zombie(str(pid))}
        if not (pids or exiting):
            return bool(prep.cgroups)  # a marker can be erased: sweep again later
        if time.monotonic() > deadline:
            return False
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        _await_exit(pids | exiting, min(deadline, time.monotonic() + 0.05))


def _await_exit(pids: set[int], until: float) -> None:
    """Wait until each of `pids` has exited (its pidfd is readable) or
    `until`, whichever comes first: no polling sleep. Without pidfds
    (an old kernel), a millisecond."""
    fds: list[int] = []
    try:
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                continue  # gone already
            except OSError:
                time.sleep(0.001)
                return
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        pending = len(fds)
        while pending and (left := until - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                pending -= 1
    finally:
        for fd in fds:
            os.close(fd)


def _cgroup_members(cgroups: list[Path]) -> set[int]:
    pids: set[int] = set()
    for cg in cgroups:
        with contextlib.suppress(OSError):
            pids.update(int(x) for x in _read(f"{cg}/cgroup.procs").split())
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

"""A process waiting, already inside the next call's cgroups, to become that
call's bubblewrap: the call then pays no cgroup migration.

Moving a process into a cgroup makes the kernel wait for an RCU grace
period first when no move happened for a while (several ms, tens on a busy
machine, unless the host sets `rcu_expedited=1` or `favordynmods`). A
process forked by one already in a cgroup is in it from the start, with no
move. So after each bubblewrap call, the worker's clean-up thread (`aftercall`) starts the next
call's standby: a tiny `perl` (Debian's perl-base is essential) that waits
on a pipe, with the call's output pipe already in place, and moves it into
a fresh pair of cgroups; the wait happens there, between calls. The call
writes its limits into the cgroups and its rlimits onto the standby
(`prlimit(2)`: bubblewrap and all it starts inherit them), then the
standby's cwd, environment and argv into the pipe; the standby execs them
(it is the worker's child, so the worker reaps it as usual), and everything
bubblewrap forks starts in the cgroups: no block fd to wait on.

No standby (none ready, the machine has no `perl`, another thread took it):
the call makes its cgroups and moves bubblewrap itself, as before. A standby
whose worker died reads end of file and exits; its empty cgroups are removed
by the next probe (`host._remove_stale`). The standby's memory (a perl
waiting, a few MB, most of it page cache) is charged to the call's cgroup.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.sandbox import aftercall

__all__ = ["Standby", "take", "refill", "settle", "PERL"]

PERL = shutil.which("perl", path="/usr/bin:/bin")
# Reads "cwd\0count\0K=V\0...argv...\0" to end of file, then becomes the argv.
_SCRIPT = r"""
open(my $in, "<&=", $ARGV[0]) or exit 127;
local $/; my $m = <$in>; close $in;
exit 0 if !defined $m || $m eq "";
my @f = split /\0/, $m, -1; pop @f;
my $cwd = shift @f; my $n = shift @f; %ENV = ();
for (1 .. $n) { my ($k, $v) = split /=/, shift(@f), 2; $ENV{$k} = $v; }
chdir $cwd or die "cannot enter $cwd: $!\n";
exec { $f[0] } @f or die "cannot run $f[0]: $!\n";
"""


@dataclass
class Standby:
    """One waiting process, its cgroups (named `<worker pid>-<call_id>`) and
    the write end of the pipe it reads its command from."""

    proc: subprocess.Popen[bytes]
    call_id: str
    cgroups: list[Path]
    message: int
    limited: object = None  # the limits `make` wrote into its cgroups (None: none)

    def start(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> None:
        """Hand the standby its command (it execs it at once)."""
        parts = [cwd, str(len(env)), *(f"{k}={v}" for k, v in env.items()), *argv, ""]
        data = "\0".join(parts).encode("utf-8", "surrogateescape")  # os.fsencode, at once
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.message, view) :]
        finally:
            os.close(self.message)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.message)
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


_lock = threading.Lock()
_ready: dict[int, tuple[tuple[str, ...], Standby]] = {}  # worker pid -> (cgroup parents, standby)
_making: dict[int, threading.Event] = {}  # worker pid -> set once the one being made is ready


def take(parents: tuple[str, ...]) -> Standby | None:
    """This worker's standby for cgroups under `parents`, if one is ready
    (one still being made is left for the next call: calls back to back
    take every other one, and a call never waits for it)."""
    pid = os.getpid()
    with _lock:
        found = _ready.pop(pid, None)
    if found is None:
        return None
    wanted, standby = found
    if wanted != parents or standby.proc.poll() is not None:
        standby.discard()
        return None
    return standby


def settle(timeout_s: float = 5.0) -> None:
    """Wait until the standby being made (if any) is ready, and every
    clean-up of the calls before (`aftercall`) is done (tests)."""
    aftercall.settle(timeout_s)
    with _lock:
        making = _making.get(os.getpid())
    if making is not None:
        making.wait(timeout_s)


def refill(
    parents: tuple[str, ...], make: Callable[[str], list[Path]], limited: object = None
) -> None:
    """Make the next standby in a thread (`make(call_id)` makes its cgroups,
    empty, with the limits `limited` written: the last call's, which the
    next call most likely has too), unless one is ready or being made, or
    there is no perl."""
    pid = os.getpid()
    with _lock:
        if PERL is None or pid in _ready or pid in _making:
            return
        event = _making[pid] = threading.Event()
    aftercall.later(lambda: _make(parents, make, event, limited))


def _make(
    parents: tuple[str, ...],
    make: Callable[[str], list[Path]],
    done: threading.Event,
    limited: object,
) -> None:
    standby = None
    try:
        standby = _launch(make)
        if standby is not None:
            standby.limited = limited
    finally:
        with _lock:
            if standby is not None:
                _ready[os.getpid()] = (parents, standby)
            _making.pop(os.getpid(), None)
        done.set()


def _launch(make: Callable[[str], list[Path]]) -> Standby | None:
    assert PERL is not None
    call_id = uuid.uuid4().hex
    try:
        cgroups = make(call_id)
    except OSError:
        return None
    message = os.pipe()
    try:
        proc = subprocess.Popen(
            [PERL, "-e", _SCRIPT, str(message[0])],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,  # not a session: see process._group
            close_fds=True,
            pass_fds=(message[0],),
            env={},
        )
    except OSError:
        for fd in message:
            os.close(fd)
        _remove(cgroups)
        return None
    os.close(message[0])
    standby = Standby(proc, call_id, cgroups, message[1])
    try:
        for cg in cgroups:  # the grace-period wait, here between calls
            (cg / "cgroup.procs").write_text(str(proc.pid))
    except OSError:
        standby.discard()
        _remove(cgroups)
        return None
    return standby


def _remove(cgroups: list[Path]) -> None:
    for cg in cgroups:
        with contextlib.suppress(OSError):
            cg.rmdir()

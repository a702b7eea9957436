"""Run shell lines in real bash and record every program it starts.

Each batch runs in one bubblewrap box: the system read-only, every program
directory (`/usr/bin`, `/usr/sbin`, `/usr/local/bin`; `/bin` and `/sbin` are
links to them) replaced by a folder of links to one recording shim, so
nothing a line names does anything. A few programs stay real because they run
others and the analysis claims to see through them (the shells, `env`,
`xargs`, `find`, `nice`, `nohup`, `timeout`, `stdbuf`, `setsid`). Each line
runs as `bash -c LINE` under `strace -f -e trace=execve`: what the trace
shows started (a successful execve, by any path) is what bash ran; the
shim's own log is kept as a second witness. No network, no writable folder but the output one;
the system profile files are blanked and HOME is an empty read-only folder,
while the working folder holds startup files (`.bashrc`, `.profile`, ...)
that run a canary program, so a line that makes a shell read them is caught.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BIN_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin")
# Programs that run other programs and are unwrapped by the analysis: real.
REAL = (
    "bash",
    "sh",
    "dash",
    "env",
    "xargs",
    "find",
    "nice",
    "nohup",
    "timeout",
    "stdbuf",
    "setsid",
)
# Names the shim answers besides whatever the host has (so a line naming them
# starts "them" even where they are not installed).
EXTRA = ("sudo", "id", "canary", "zsh", "ksh", "fish", "python3", "curl", "git", "make")
CANARY = "canary"
STARTUP_FILES = (
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".profile",
    ".zshenv",
    ".zshrc",
    ".kshrc",
    "env.sh",
    ".config/fish/config.fish",
)
SHIM = """#!/opt/real/sh
[ -n "$SHIM_LOG" ] && printf '%s\\n' "${0##*/}" >> "$SHIM_LOG"
exit 0
"""
_EXECVE = re.compile(r'^(\d+)\s+execve\("((?:[^"\\]|\\.)*)", (.*)$')
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. execve resumed>.*= 0$")


def execs(trace: str) -> list[str]:
    """Every path a successful execve ran, from `strace -f` output, where
    processes running at once split a call: `execve(...) <unfinished ...>`,
    then `<... execve resumed>) = 0`."""
    out: list[str] = []
    pending: dict[str, str] = {}
    for line in trace.splitlines():
        m = _EXECVE.match(line)
        if m:
            pid, path, rest = m.groups()
            if rest.endswith("<unfinished ...>"):
                pending[pid] = path
            elif rest.endswith(" = 0"):
                out.append(path)
            continue
        r = _RESUMED.match(line)
        if r and r.group(1) in pending:
            out.append(pending.pop(r.group(1)))
    return out


def available() -> str | None:
    """Why the tester cannot run here, or None."""
    for tool in ("bwrap", "strace", "timeout", "dash", "bash"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install bubblewrap strace)"
    return None


@dataclass(frozen=True)
class Ran:
    line: str
    started: tuple[str, ...]  # base names of every program execve'd, in order
    # What the shim logged: the programs it stood in for, and also a shim a
    # shell read as a script (`bash id` finds `id` on PATH and reads it: a
    # script run, which the analysis reports as `bash`, not a program start).
    shimmed: tuple[str, ...] = ()
    timed_out: bool = False


class Box:
    """The prepared folders; `run` takes a batch of lines."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shims = root / "shims"
        shims.mkdir()
        (root / "shim").write_text(SHIM)
        (root / "shim").chmod(0o755)
        names = set(EXTRA)
        for d in BIN_DIRS:
            if os.path.isdir(d):
                names.update(os.listdir(d))
        for n in sorted(names):
            if "/" in n:
                continue
            target = f"/opt/real/{n}" if n in REAL else "/opt/shim"
            (shims / n).symlink_to(target)
        work = root / "work"
        for f in STARTUP_FILES:
            p = work / f
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"{CANARY} {f}\n")
        (root / "home").mkdir()
        (root / "etcempty").mkdir()
        (root / "empty").write_text("")

    def _bwrap(self, out: Path) -> list[str]:
        r = str(self.root)
        args = ["bwrap", "--ro-bind", "/", "/", "--tmpfs", "/opt", "--tmpfs", "/tmp"]
        for n in REAL:
            args += ["--ro-bind", os.path.realpath(shutil.which(n) or n), f"/opt/real/{n}"]
        for n in ("strace", "timeout"):
            args += ["--ro-bind", os.path.realpath(shutil.which(n) or n), f"/opt/tool/{n}"]
        args += ["--ro-bind", f"{r}/shim", "/opt/shim"]
        for d in BIN_DIRS:
            if os.path.isdir(d):
                args += ["--ro-bind", f"{r}/shims", d]
        for f in ("/etc/profile", "/etc/bash.bashrc", "/etc/environment"):
            if os.path.exists(f):
                args += ["--ro-bind", f"{r}/empty", f]
        if os.path.isdir("/etc/profile.d"):
            args += ["--ro-bind", f"{r}/etcempty", "/etc/profile.d"]
        args += ["--ro-bind", f"{r}/work", "/opt/work", "--ro-bind", f"{r}/home", "/opt/home"]
        args += ["--bind", str(out), "/opt/out", "--dev", "/dev", "--proc", "/proc"]
        args += ["--unshare-all", "--die-with-parent", "--new-session", "--chdir", "/opt/work"]
        args += ["--clearenv", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin"]
        args += ["--setenv", "HOME", "/opt/home", "--setenv", "LANG", "C.UTF-8"]
        return args

    def run(self, lines: Sequence[str], timeout_s: float = 5.0) -> list[Ran]:
        """Each line in a fresh `bash -c` under strace; in one box per batch."""
        out = Path(tempfile.mkdtemp(dir=self.root, prefix="out-"))
        try:
            for i, line in enumerate(lines):
                (out / f"{i}.line").write_bytes(line.encode())
            driver = (
                "i=0\n"
                f"while [ $i -lt {len(lines)} ]; do\n"
                "  line=$(< /opt/out/$i.line)\n"
                f"  SHIM_LOG=/opt/out/$i.shim /opt/tool/timeout -s KILL {timeout_s} "
                "/opt/tool/strace -f -qq -e trace=execve -o /opt/out/$i.trace "
                '/opt/real/bash -c "$line" </dev/null >/dev/null 2>&1\n'
                "  echo $? > /opt/out/$i.rc\n"
                "  i=$((i+1))\n"
                "done\n"
            )
            budget = 30 + len(lines) * (timeout_s + 1)
            subprocess.run(
                [*self._bwrap(out), "/opt/real/bash", "-c", driver],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=budget,
                check=True,
            )
            return [self._read(out, i, line) for i, line in enumerate(lines)]
        finally:
            shutil.rmtree(out, ignore_errors=True)

    @staticmethod
    def _read(out: Path, i: int, line: str) -> Ran:
        trace = out / f"{i}.trace"
        started: list[str] = []
        if trace.exists():
            paths = execs(trace.read_text())
            started = [p.rsplit("/", 1)[-1] for p in paths[1:]]  # [0] is the line's bash
        shim = out / f"{i}.shim"
        shimmed = tuple(shim.read_text().split()) if shim.exists() else ()
        rc = (out / f"{i}.rc").read_text().strip() if (out / f"{i}.rc").exists() else ""
        return Ran(line, tuple(started), shimmed, timed_out=rc in ("124", "137"))


def make_box() -> tuple[Box, Path]:
    root = Path(tempfile.mkdtemp(prefix="shell-differential-"))
    return Box(root), root

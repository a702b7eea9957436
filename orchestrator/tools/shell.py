"""The shell tool: run one argv in the workspace, inside the sandbox, bounded
in time and output.

No shell is involved (policy has already checked every program in the argv).
`orchestrator.sandbox.runtime` plans and sets up the sandbox (bubblewrap, or rlimits
and a process group without it; a copy-on-write view of the workspace either
way; see docs/security.md); this module runs the command in it, supervises it,
and returns what it changed (a `Changeset`, applied here only when asked): on timeout, and once it exits, everything it
left running is killed with it. Output (stdout and stderr, interleaved) is
read as it comes and only its head and tail are kept, so a command printing
gigabytes costs no memory; `output_bytes` still counts every byte.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import resource
import selectors
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import (
    InfraUnavailable,
    JobCancelled,
    PolicyDenied,
    ResourceExceeded,
    ToolError,
    ToolInputError,
    ToolTimeout,
)
from orchestrator.guard.changeset import judge, shell_denials
from orchestrator.guard.policy import DEFAULT_POLICY
from orchestrator.ops import logs
from orchestrator.run.steps import ShellStep
from orchestrator.sandbox import runtime as sandbox
from orchestrator.sandbox.changeset import Changeset
from orchestrator.sandbox.system import in_view, view_roots
from orchestrator.sandbox.view import stable_mounts
from orchestrator.tools.base import ToolResult
from orchestrator.tools.paths import resolve_in_workspace

_log = logs.get_logger(__name__)

__all__ = [
    "run_shell",
    "ShellResult",
    "CommandFailed",
    "DEFAULT_PATH",
    "denied_reads",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CHUNK = 64 * 1024
_MB = 1 << 20
_CWD_HINT = "use an existing directory relative to the target."
_DRAIN_AFTER_EXIT_S = 0.5  # output still in flight from children once the command exits
CANCEL_POLL_S = 1.0  # how often a running command asks whether its job was cancelled
# Asked while the command runs: why it must stop now (its job was cancelled), or None.
Cancelled = Callable[[], "str | None"]


class CommandFailed(ToolError):
    """The command exited with a code outside `ok_exit_codes`; `.result` has
    its (capped) output so the failure can be recorded and shown."""

    def __init__(self, message: str, result: ToolResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class ShellResult(ToolResult):
    """A shell call's result and what the command changed. `applied` says
    whether `changeset` is already in the workspace (run_shell's `apply`)."""

    changeset: Changeset = field(default_factory=Changeset)
    applied: bool = False
    hidden: tuple[str, ...] = ()  # workspace paths the command was not shown (a folder: "x/")


def run_shell(
    workspace: Path,
    step: ShellStep,
    *,
    env_base: Mapping[str, str] | None = None,
    limits: Any = None,
    network: Any = None,
    policy: Any = None,
    mode: sandbox.Mode = "auto",
    host: sandbox.Host | None = None,
    toolchains: Sequence[str] = (),
    view: sandbox.ViewKind = "auto",
    apply: bool = True,
    cancelled: Cancelled | None = None,
) -> ShellResult:
    """Run `step.command` in `step.cwd` inside the sandbox, against a
    copy-on-write view of the workspace, and return what it changed.

    The workspace is not written while the command runs. With `apply` (the
    default, for callers that do not handle changesets) the changeset is
    judged against the session `policy`'s write denials (`shell_denials`) and,
    when allowed, applied before returning, also when the command failed
    (not when a limit stopped it); a denied changeset applies nothing.
    Without `apply`, the caller judges (`guard.changeset.judge`) and applies
    (`sandbox.apply`). After a timeout nothing is applied either way.

    The environment is scrubbed: PATH (each toolchain's `bin/` first), a
    throwaway HOME, LANG, TMPDIR, `env_base`, `step.env`, git hardening.
    `limits` (`policy.Limits` or `SandboxLimits`) and the step's caps: the
    smaller wins. `network`: a `policy.Network` or a bool (default off).
    Files the `policy` denies reading are shown empty (bubblewrap only).
    `toolchains`: folders bound read-only at their own paths. `mode`, `view`
    and `host` force a mode, a view, machine facts (tests).
    `cancelled` is asked every CANCEL_POLL_S while the command runs: a
    reason stops it (the process group is killed, nothing is kept) and
    raises JobCancelled. Long because it is the call's one sequence: set up,
    run, stop at a limit or a cancel, judge, apply."""
    root = workspace.resolve()
    # The workspace itself (the usual cwd) needs no walk through the jail.
    cwd = root if step.cwd in (".", "") else resolve_in_workspace(root, step.cwd)
    if not cwd.is_dir():
        raise ToolInputError(f"cwd {step.cwd!r} is not a directory in the workspace; {_CWD_HINT}")
    host = host or sandbox.probe()
    tools = _toolchains(toolchains)
    lim = sandbox.SandboxLimits.of(limits)
    extra = {**(env_base or {}), **step.env}
    boxed = host.mode(mode) == "bwrap"
    _check_program(
        step.command[0],
        cwd,
        extra.get("PATH") or sandbox.toolchain_path(tools, host.path),
        tools,
        view_roots(str(root), tools) if boxed else None,
    )
    req = sandbox.Request(
        argv=tuple(step.command),
        workspace=str(root),
        cwd=str(cwd),
        env=extra,
        limits=lim,
        network=bool(getattr(network, "enabled", network)),
        mode=mode,
        toolchains=tools,
        masks=_masks(root, policy, tools) if boxed else (),
    )
    timeout_s = min(step.timeout_s, lim.wall_s)
    result, changes, stopped, planned, hits = _run(
        root, req, host, view, step, timeout_s, cancelled
    )
    shown = shlex.join(step.command)
    if (over := exceeded(result, planned, hits, lim)) is not None:
        raise over  # before the timeout: the limit that stopped it says more
    if stopped:
        raise _stopped(stopped, shown, timeout_s, result)
    if apply and changes:
        _judge_and_apply(root, changes, policy, shown)
    result = dataclasses.replace(
        result,
        changeset=changes,
        applied=apply and bool(changes),
        hidden=_hidden(root, req.masks, tools),
    )
    if result.exit_code not in step.ok_exit_codes:
        raise CommandFailed(
            f"command `{shown}` {_why(result.exit_code, planned)}, not "
            f"one of ok_exit_codes {list(step.ok_exit_codes)}. Fix what it "
            "reports, or list the code in `ok_exit_codes` if it means success."
            + _tail(result.output),
            result,
        )
    return result


def _stopped(why: bool | str, shown: str, timeout_s: float, result: ShellResult) -> ToolError:
    """The error of a command killed before it ended: its time limit (`why`
    is True) or a cancel (`why` says by whom); it carries what it printed."""
    err: ToolError
    if isinstance(why, str):
        err = JobCancelled(
            f"command `{shown}` was stopped: {why}. It was killed with everything it "
            "started; nothing it changed was kept."
        )
    else:
        err = ToolTimeout(
            f"command `{shown}` ran past its time limit of {timeout_s:g} s "
            "and was killed with everything it started; nothing it changed was kept. "
            "Make it faster, or raise `timeout_s` on the step (or the policy's `limits.wall_s`)."
        )
    err.result = result
    return err


def _run(
    root: Path,
    req: sandbox.Request,
    host: sandbox.Host,
    view: sandbox.ViewKind,
    step: ShellStep,
    timeout_s: float,
    cancelled: Cancelled | None = None,
) -> tuple[ShellResult, Changeset, bool | str, str, dict[str, int]]:
    """Set up the call, run and supervise it, read its changeset; returns
    (result, changeset, why it was stopped (True: timed out, a str: the
    cancel's reason, False: it ended), the sandbox mode, what its cgroups
    counted against their limits)."""
    with sandbox.prepare(root, host, req.mode, req.limits, view) as prep:
        if prep.cgroup_error:
            host = dataclasses.replace(host, cgroups=sandbox.Cgroups(why=prep.cgroup_error))
        req = dataclasses.replace(
            req,
            view=prep.view,
            home=str(prep.home) if prep.home else None,
            call_id=prep.call_id,
            info_fd=prep.info[1] if prep.info else None,
            block_fd=prep.block[0] if prep.block else None,
            standby=prep.standby is not None,
            empty_file=sandbox.empty_file() if req.masks else None,
        )
        planned = sandbox.plan(req, host)
        started = time.monotonic()
        with stable_mounts():
            try:
                proc = sandbox.spawn(planned, prep)
            except OSError as err:
                raise InfraUnavailable(
                    f"the sandbox could not start `{planned.argv[0]}`: "
                    f"{err.strerror}. Run `orchestrator doctor` to see what "
                    "the sandbox needs."
                ) from None
            lim = req.limits
            capture = _Capture(min(step.max_output_bytes, lim.output_bytes), lim.output_bytes)
            stopped, status, usage = _supervise(
                proc, capture, started + timeout_s, cancelled, _disk_watch(prep, lim)
            )
        hits = sandbox.limit_hits(prep)
        if not stopped and capture.limit != "output_bytes":
            used = sandbox.written(prep)  # also what it wrote just before it ended
            over = _over(used, lim) or (capture.limit if capture.limit in _VIEW_LIMITS else None)
            if over == "disk_mb":
                capture.limit, hits["disk_bytes"] = over, used.bytes
            elif over == "files":
                capture.limit, hits["files_written"] = over, used.entries
        if capture.limit == "output_bytes":
            hits["output_over"] = capture.total
        # A call a limit stopped keeps nothing: its changeset is not even read.
        changes = Changeset() if stopped or capture.limit else sandbox.changes(prep, root)
    result = ShellResult(
        output=capture.text(),
        output_bytes=capture.total,
        exit_code=os.waitstatus_to_exitcode(status),
        cpu_s=usage.ru_utime + usage.ru_stime,
        duration_s=time.monotonic() - started,
    )
    return result, changes, stopped, planned.mode, hits


_VIEW_LIMITS = ("disk_mb", "files")  # what a command writes into its view


def _over(used: Any, lim: Any) -> str | None:
    """The view limit `used` (bytes, entries) is past, if any."""
    if used.bytes > lim.disk_mb * _MB:
        return "disk_mb"
    return "files" if used.entries > lim.files else None


def _disk_watch(prep: Any, lim: Any) -> Callable[[], str | None]:
    """The view limit (`disk_mb`, `files`) the command has gone past, for
    `_supervise` to ask every second. Measuring walks what it wrote, so a
    command making many files is measured less often: at most a tenth of
    the time goes to it (the check when it ends catches what this misses)."""
    due = 0.0

    def over() -> str | None:
        nonlocal due
        start = time.monotonic()
        if start < due:
            return None
        used = sandbox.written(prep)
        due = start + 10 * (time.monotonic() - start)
        return _over(used, lim)

    return over


def exceeded(
    result: ShellResult, mode: str, hits: dict[str, int], lim: Any
) -> ResourceExceeded | None:
    """The limit that stopped a command, if one did: its writes into the
    view past `disk_mb`, its output past `output_bytes` (both stop it at
    once), a fork refused at the process limit (a contained fork bomb may
    still exit 0), an OOM kill, a CPU-time or file-size signal. Nothing the
    command changed is kept."""
    code, cpu_s = result.exit_code, result.cpu_s
    sig = -code if code < 0 else code - 128 if mode == "bwrap" and 128 < code <= 192 else 0
    found: tuple[str, str, str] | None = None
    if "disk_bytes" in hits:
        found = (
            "disk_mb",
            f"{lim.disk_mb} MB written",
            f"{hits['disk_bytes'] / _MB:.0f} MB written into the view",
        )
    elif "files_written" in hits:
        found = (
            "files",
            f"{lim.files} files, folders and deletes",
            f"{hits['files_written']} made or changed in the view",
        )
    elif "output_over" in hits:
        found = (
            "output_bytes",
            f"{lim.output_bytes} bytes of output",
            f"more than {lim.output_bytes} bytes printed ({hits['output_over']} read before "
            "it was stopped)",
        )
    elif hits.get("oom_kills"):
        peak = hits.get("memory_peak", 0) / (1 << 20)
        found = ("memory_mb", f"{lim.memory_mb} MB", f"{peak:.0f} MB used, killed out of memory")
    elif hits.get("forks_refused"):
        peak = hits.get("processes_peak", lim.processes)
        found = (
            "processes",
            f"{lim.processes} processes",
            f"{peak} at once, {hits['forks_refused']} more refused",
        )
    elif sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= lim.cpu_s * 0.95):
        found = ("cpu_s", f"{lim.cpu_s:g} s of CPU", f"{cpu_s:.1f} s used")
    elif sig == signal.SIGXFSZ:
        found = ("file_size_mb", f"{lim.file_size_mb} MB per file", "a write past it")
    if found is None:
        return None
    name, limit, value = found
    err = ResourceExceeded(
        f"the command hit its {name} limit ({limit}; seen: {value}) and was stopped; "
        "nothing it changed was kept. Make it use less, or raise `limits."
        f"{name}` in the policy",
        limit=f"{name}={limit}",
        value=value,
    )
    err.result = result
    return err


def _judge_and_apply(root: Path, changes: Changeset, policy: Any, shown: str) -> None:
    """run_shell's own `apply`: the command itself was already judged (an `rm`
    asked before it ran), so no tracked set is needed here; what the
    changeset does to denied paths, links and special files is judged."""
    verdict = judge(changes, shell_denials(_policy(policy)), (), str(root))
    if verdict.decision == "deny":
        raise PolicyDenied(shown, verdict.rule_id or "changeset", verdict.reason)
    sandbox.apply(root, changes)


def _policy(pol: Any) -> Any:
    return DEFAULT_POLICY if pol is None else pol


def _toolchains(toolchains: Sequence[str]) -> tuple[str, ...]:
    """Absolute, existing folders, or a ToolInputError naming the setting."""
    out = []
    for t in toolchains:
        p = Path(t)
        if not p.is_absolute() or not p.is_dir():
            raise ToolInputError(
                f"toolchain {t!r} is not an existing folder given by its absolute path; "
                "fix the `toolchains:` setting (a venv, a pyenv version, a node install)."
            )
        out.append(str(p.resolve()))
    return tuple(out)


def denied_reads(pol: Any = None) -> sandbox.MaskRules:
    """The globs of every path rule of `pol` (default: the built-in rules)
    that denies reading: what the sandbox hides from the command."""
    return tuple(
        tuple(r.paths)
        for r in _policy(pol).path_rules
        if r.decision == "deny" and r.access in ("read", "any")
    )


def _why(code: int, mode: str) -> str:
    if code < 0:
        return f"was killed by {_signame(-code)}"
    if mode == "bwrap" and 128 < code <= 128 + 64:
        # bubblewrap's init reports a command killed by signal N as exit 128+N.
        return (
            f"exited with code {code} (128 + {code - 128}: it was killed by "
            f"{_signame(code - 128)}, or chose that code)"
        )
    return f"exited with code {code}"


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _tail(output: str) -> str:
    tail = output[-800:].strip()
    return f"\nLast output:\n{tail}" if tail else ""


# Past this many masks a call's start is slow enough to say so (each is a
# mount: about 2 s for 600, measured on a uv-filled venv).
_MANY_MASKS = 100


def _hidden(root: Path, masks: Sequence[sandbox.Mask], tools: Sequence[str]) -> tuple[str, ...]:
    """What the command was not shown, workspace-relative (a toolchain is
    bound over its masks: shown)."""
    return tuple(
        sorted(
            os.path.relpath(m.path, root) + ("/" if m.dir else "")
            for m in masks
            if not in_view(m.path, tools)
        )
    )


def _masks(root: Path, policy: Any, tools: Sequence[str]) -> tuple[sandbox.Mask, ...]:
    """The workspace paths to hide; many of them (a package manager's venv or
    `node_modules`, hard-linked from its cache) are logged with the fix."""
    masks = sandbox.workspace_masks(root, denied_reads(policy))
    shown = [m for m in masks if not in_view(m.path, tools)]
    if len(shown) > _MANY_MASKS:
        tops = sorted({os.path.relpath(m.path, root).split("/")[0] for m in shown})
        _log.warning(
            "many workspace files are hidden one by one (hard links out of the workspace "
            "or denied paths), one mount each, which slows every shell call; if a folder "
            "is a package manager's (a uv venv, pnpm's node_modules), name it in "
            "`toolchains:` to show it read-only as it is",
            hidden=len(shown),
            folders=tops[:10],
        )
    return masks


def _check_program(
    program: str,
    cwd: Path,
    path: str,
    toolchains: Sequence[str],
    roots: Sequence[str] | None = None,
) -> None:
    """Refuse a program that cannot start, with the reason, before any sandbox
    is set up (inside it, the failure would only be an exit code). `roots`:
    the host folders bubblewrap shows (None: the fallback shows everything)."""
    hidden, shown_path = "", path
    if roots is not None:
        path, skipped = _path_in_view(path, tuple(roots))
        if skipped:
            hidden = "; folders on it outside what the sandbox shows are skipped"
    if "/" in program:
        target = cwd / program
        if not target.exists():
            raise ToolInputError(
                f"program {program!r} does not exist (relative paths are "
                "relative to the step's cwd)."
            )
        if roots is not None and not in_view(os.path.abspath(target), roots):
            raise ToolInputError(
                f"program {program!r} is outside what the sandbox shows (the system "
                "folders, the workspace, the toolchains): name the folder that has it in "
                "`toolchains:` (a venv, a pyenv version, a node install)"
                + (f"; the toolchains given are {', '.join(toolchains)}." if toolchains else ".")
            )
    else:
        found = _found_on_path(program, path)
        if found is None:
            raise ToolInputError(
                f"program {program!r} was not found on PATH {shown_path!r}{hidden}; the environment is "
                "scrubbed (PATH, HOME, LANG and the step's `env` only), so only that PATH "
                "is searched. Use an absolute path, set PATH in the step's `env`, or name "
                "the folder that has it in `toolchains:` (a venv, a pyenv version)"
                + (f"; the toolchains given are {', '.join(toolchains)}." if toolchains else ".")
            )
        target = Path(found)
    if target.is_dir() or not os.access(target, os.X_OK):
        raise ToolInputError(
            f"program {program!r} is not executable; check its mode, or run "
            "it through its interpreter (e.g. `python script.py`)."
        )


@functools.lru_cache(maxsize=64)
def _path_in_view(path: str, roots: tuple[str, ...]) -> tuple[str, bool]:
    """PATH without the folders the sandbox does not show, and whether any
    was left out (kept: a worker's calls repeat one PATH and one view)."""
    folders = [d for d in path.split(":") if d]
    shown = [d for d in folders if in_view(d, roots)]
    return ":".join(shown), len(shown) < len(folders)


_FOUND: dict[tuple[str, str], str] = {}  # (program, PATH) -> where it was found last


def _found_on_path(program: str, path: str) -> str | None:
    """Where `program` is on `path` (executable, else only present), or None.
    The last answer for the same program and PATH is kept while it is still
    an executable file (a call repeating a program then stats one file, not
    every PATH folder before it); the caller checks what it returns."""
    key = (program, path)
    kept = _FOUND.get(key)
    if kept is not None and os.access(kept, os.X_OK) and not os.path.isdir(kept):
        return kept
    found = shutil.which(program, path=path)
    if found is not None:
        if len(_FOUND) > 256:
            _FOUND.clear()
        _FOUND[key] = found
        return found
    return shutil.which(program, os.F_OK, path)


def _supervise(
    proc: subprocess.Popen[bytes],
    capture: _Capture,
    deadline: float,
    cancelled: Cancelled | None = None,
    disk_over: Callable[[], str | None] | None = None,
) -> tuple[bool | str, int, resource.struct_rusage]:
    """Read output until EOF and the command's exit (or the deadline, a
    cancel, output past the capture's `stop_at`, or `disk_over()`, asked
    every CANCEL_POLL_S: the limit goes to `capture.limit`), kill the process
    group, then reap; returns (True when timed out, the cancel's reason, else
    False; wait status; resource usage).
    The command is reaped only after the kill, so its pid (the group id) cannot
    be reused by an unrelated process while we signal the group."""
    assert proc.stdout is not None
    out = proc.stdout.fileno()
    os.set_blocking(out, False)
    sel = selectors.DefaultSelector()
    sel.register(out, selectors.EVENT_READ)
    pidfd = _pidfd(proc.pid)
    if pidfd is not None:
        sel.register(pidfd, selectors.EVENT_READ)
    eof = exited = False
    stopped: bool | str = False
    drain_until = deadline
    ask_at = time.monotonic() + CANCEL_POLL_S
    try:
        while not (eof and exited):
            now = time.monotonic()
            if now >= drain_until:
                stopped = not exited  # after an exit: a leftover child holds the pipe
                break
            if not exited and now >= ask_at:
                ask_at = now + CANCEL_POLL_S
                reason = cancelled() if cancelled is not None else None
                if reason:
                    stopped = reason
                    break
                if disk_over is not None and (crossed := disk_over()):
                    capture.limit = crossed
                    break
            wait = drain_until - now if pidfd is not None else min(drain_until - now, 0.05)
            if not exited:
                wait = min(wait, max(ask_at - now, 0.0))
            for key, _ in sel.select(wait):
                if key.fd == out and _read_available(out, capture):
                    eof = True
                    sel.unregister(out)
            if capture.limit is not None:
                break
            if not exited and _has_exited(proc.pid):
                exited = True
                drain_until = min(deadline, time.monotonic() + _DRAIN_AFTER_EXIT_S)
                if pidfd is not None:
                    sel.unregister(pidfd)
    finally:
        _kill_group(proc.pid)
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if not eof:
        _read_available(out, capture)  # what was already in the pipe
    proc.stdout.close()
    return stopped, status, usage


def _has_exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _read_available(fd: int, capture: _Capture) -> bool:
    """Read what the pipe holds without blocking (at most 1 MB, so a command
    that never stops printing still meets its deadline); True at end of file."""
    for _ in range(16):
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            return False
        if not chunk:
            return True
        capture.add(chunk)
        if capture.limit is not None:
            return False
    return False


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # no pidfd: poll for the exit every 50 ms instead


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Capture:
    """Keeps the first and last `limit/2` bytes of a stream and counts the
    rest; past `stop_at` bytes in all it names the limit (`limit`) that
    stops the command."""

    def __init__(self, limit: int, stop_at: int | None = None) -> None:
        self.head_cap = (limit + 1) // 2
        self.tail_cap = limit - self.head_cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.stop_at = stop_at
        self.limit: str | None = (
            None  # the limit that stopped the command: output_bytes, disk_mb, files
        )

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.stop_at is not None and self.total > self.stop_at:
            self.limit = "output_bytes"
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk and self.tail_cap:
            self.tail += chunk[-self.tail_cap :]
            del self.tail[: -self.tail_cap]

    def text(self) -> str:
        head, tail = bytes(self.head), bytes(self.tail)
        if self.total == len(head) + len(tail):
            return (head + tail).decode("utf-8", "replace")
        cut = utf8_prefix_len(head)
        start = 0
        while start < min(len(tail), 3) and (tail[start] & 0xC0) == 0x80:
            start += 1  # the tail starts inside a character
        dropped = self.total - cut - (len(tail) - start)
        head_s = head[:cut].decode("utf-8", "replace")
        sep = "" if not head_s or head_s.endswith("\n") else "\n"
        return f"{head_s}{sep}... [truncated {dropped} bytes] ...\n" + tail[start:].decode(
            "utf-8", "replace"
        )


def utf8_prefix_len(data: bytes) -> int:
    """Length of `data` without a UTF-8 character cut off at its end."""
    for back in range(1, min(len(data), 4) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # continuation: keep looking for the lead
        if byte < 0xC0:
            return len(data)  # ASCII (or stray byte): nothing cut
        need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return len(data) - back if back < need else len(data)
    return len(data)

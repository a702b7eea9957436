"""What `orchestrator doctor` says about the sandbox: the active mode and
view, its tools, and in plain words what it protects against and what not."""

from __future__ import annotations

from orchestrator.sandbox.host import Host
from orchestrator.sandbox.plan import CALL_ID_VAR

__all__ = ["describe", "migration_note"]

# What a root worker's command keeps of root's powers, by mode (`plan.FILE_CAPS`).
_ROOT_CAPS = {
    "bwrap": " with only the file capabilities kept (chown, mode override, owner "
    "checks: it works a checkout another user owns as the file tools do)",
}


def describe(host: Host) -> dict[str, object]:
    """What `orchestrator doctor` reports: the active mode, its tools, and in
    plain words what it protects against and what it does not.
    Long because each guarantee and gap is a sentence an operator reads,
    chosen by mode, view and cgroups; split up, they would read out of order."""
    mode = host.mode("auto")
    view = host.view("auto")
    why_copy = host.overlay_problem or "asked for"
    cg = host.cgroups
    protects = [
        "the worker's environment: commands see PATH, LANG, a throwaway HOME, the step's "
        "env and git hardening only (no LD_*/BASH_ENV/GIT_* overrides)",
        "git hooks, fsmonitor and system/global git config (core.hooksPath=/dev/null)",
        "runaway commands: wall-clock timeout killing everything the command started, "
        "output capped (head and tail kept), stdin closed",
        "CPU seconds, file size and open files per process (rlimits)",
        "workspace ownership: nothing changes who owns a workspace file; the command runs "
        "as the worker's own uid"
        + (_ROOT_CAPS.get(mode, " with every capability dropped") if host.is_root else ""),
    ]
    gaps: list[str] = []
    if view == "overlay":
        protects.append(
            "the workspace during a call: the command writes into an overlay whose upper "
            "layer sits in a private folder outside the workspace; what it changed is read "
            "from that layer (cost proportional to the change), judged as a whole, and only "
            "then applied, so a worker killed mid-call leaves the workspace byte-for-byte "
            "as it was"
        )
    else:
        protects.append(
            "the workspace during a call: the command runs against a private copy; what it "
            "changed is found by comparing the copy with the workspace, judged, and only "
            "then applied (a killed worker leaves the workspace as it was). Each call "
            f"copies the whole workspace, so its cost grows with its size ({why_copy})"
        )
        if mode == "fallback":
            gaps.append(
                "without bubblewrap or an overlay the command runs in the copy at the "
                "copy's own path: a command naming the workspace by its absolute path "
                "writes the real workspace"
            )
    if cg.version:
        protects.append(
            f"memory and process count for the whole call (cgroup {cg.version}), "
            "and a sweep of every process of the call afterwards"
        )
    else:
        gaps.append(
            f"no usable cgroup ({cg.why}): memory is capped per process by address "
            "space, processes by RLIMIT_NPROC (per uid, shared by concurrent calls, and "
            "not enforced for root), and leftover processes are found by their "
            f"{CALL_ID_VAR} environment marker, which a process can erase"
        )
    if mode == "bwrap":
        protects += [
            "writes outside the workspace: the system is read-only, /tmp, /var/tmp, /run "
            "and /dev/shm are private (a fresh writable tmpfs each call)",
            "reads of the host: only the system folders (/usr, /etc without its private "
            "files, the /bin and /lib links, and of /sys only the CPU, NUMA, cgroup and "
            "huge-page folders runtimes read), the workspace and the named toolchains are "
            "shown; home folders, other checkouts, /var, /opt, the rest of /sys (firmware "
            "tables, serial numbers) and the worker's state folder (event store, key "
            "files) are not",
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
            "reads of the system folders: installed programs and world-readable "
            "configuration stay readable, and the shown parts of /sys as the worker's uid "
            "sees them",
            "a secret committed to git stays readable through the repository's objects "
            "(git show HEAD:.env)",
            "with the network enabled there is no egress filter: allow_hosts is not "
            "enforced, and the host's loopback services are reachable",
            "unix sockets outside /run and /tmp stay connectable (read-only mounts do not "
            "stop connect())",
            "the kernel is shared: a kernel exploit escapes (no seccomp filter)",
        ]
    else:
        gaps += [
            "no namespaces for the command ("
            + (
                f"bubblewrap cannot start: {host.bwrap_problem}"
                if host.bwrap_problem
                else "bubblewrap is not installed"
            )
            + "): it can write wherever the worker can outside the workspace (e.g. /tmp, "
            "/var/tmp, /dev/shm), read every file the worker can, see and signal the "
            "worker's processes, and use the network and any unix socket",
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
        "view": {
            "kind": view,
            "unshare": host.unshare,
            "overlay_problem": host.overlay_problem,
            "guarantee": "the workspace is never written during a call; a changeset is "
            "read, judged and applied afterwards"
            + ("" if view == "overlay" else " (the copy view costs a copy per call)"),
        },
        "runs_as": (
            ("root, file capabilities only" if mode == "bwrap" else "root, no capabilities")
            if host.is_root
            else "the worker's user"
        ),
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

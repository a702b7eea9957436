"""The sandbox around shell commands: first its pure planning (argv, env,
rlimits) from hand-built inputs, then hostile commands run for real in both
modes. Every real run asserts its outcome, that nothing outside the workspace
changed (a canary file next to the workspace keeps its content), and that no
process of the call is left.

Tests needing bubblewrap skip without it, and FAIL when ORCH_REQUIRE_SERVICES=1
(as .ci/run sets) so CI cannot go green by skipping them."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.errors import ResourceExceeded, ToolError, ToolInputError, ToolTimeout
from orchestrator.guard.policy import Limits, Network
from orchestrator.run.steps import ShellStep
from orchestrator.sandbox import host as sandbox_host
from orchestrator.sandbox import runtime as sandbox
from orchestrator.sandbox import standby as sandbox_standby
from orchestrator.sandbox.runtime import (
    GIT_ENV,
    SANDBOX_HOME,
    Cgroups,
    Host,
    Request,
    SandboxLimits,
    describe,
    plan,
    scrub_env,
)
from orchestrator.sandbox.system import SYSFS_SHOWN, private_entries
from orchestrator.tools.shell import CommandFailed, run_shell
from tests.cli_helpers import ROOT, cli, shape_env
from tests.processes import alive, running
from tests.sandbox_helpers import SANDBOX_PY

REQUIRE = os.environ.get("ORCH_REQUIRE_SERVICES") == "1"
MB = 1024 * 1024

# -- pure planning ---------------------------------------------------------------------

ROOT_HOST = Host(
    bwrap="/usr/bin/bwrap",
    setpriv="/usr/bin/setpriv",
    is_root=True,
    cgroups=Cgroups("v1", "/cg/pids/o", "/cg/memory/o", "test"),
    path="/usr/bin:/bin",
)
USER_HOST = dataclasses.replace(ROOT_HOST, is_root=False, cgroups=Cgroups(why="none"))


def request(**kw: Any) -> Request:
    base: dict[str, Any] = dict(
        argv=("make", "test"),
        workspace="/tmp/pytest-of-root/t0/ws",
        cwd="/tmp/pytest-of-root/t0/ws/src",
        call_id="c1",
    )
    return Request(**{**base, **kw})


def pairs(argv: list[str], flag: str) -> list[str]:
    """The values following each occurrence of `flag` (one-argument options)."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_bwrap_plan_binds_the_system_read_only_then_the_workspace_read_write() -> None:
    p = plan(request(), ROOT_HOST)
    sep = p.argv.index("--")
    box, rest = p.argv[:sep], p.argv[sep + 1 :]
    assert box[:4] == ["/usr/bin/bwrap", "--ro-bind", "/usr", "/usr"]  # not all of /
    assert "/" not in pairs(box, "--ro-bind")
    assert pairs(box, "--tmpfs")[-3:] == ["/tmp", "/run", "/dev/shm"]
    assert pairs(box, "--dir") == [SANDBOX_HOME]
    ws = "/tmp/pytest-of-root/t0/ws"
    assert box[box.index("--bind") : box.index("--bind") + 3] == ["--bind", ws, ws]
    assert box.index("--bind") > box.index("/run")  # mounted after the private folders
    for flag in (
        "--unshare-pid",
        "--unshare-net",
        "--die-with-parent",
        "--new-session",
        "--unshare-ipc",
    ):
        assert flag in box
    assert pairs(box, "--cap-drop") == ["ALL"]  # root's uid, of its powers only the file ones
    assert pairs(box, "--cap-add") == ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"]
    assert pairs(box, "--chdir") == ["/tmp/pytest-of-root/t0/ws/src"]
    assert pairs(box, "--dev") == ["/dev"] and pairs(box, "--proc") == ["/proc"]
    assert rest == ["make", "test"]  # no uid switch: the cgroup holds the limits
    assert "--uid" not in box and "setpriv" not in " ".join(p.argv)


def test_bubblewraps_init_gets_the_rlimits_while_it_waits_no_prlimit_exec_no_forked_child() -> None:
    host = dataclasses.replace(ROOT_HOST, prlimit="/usr/bin/prlimit")
    lim = SandboxLimits(cpu_s=2, file_size_mb=1, open_files=64)
    p = plan(request(limits=lim, info_fd=7, block_fd=8), host)
    rest = p.argv[p.argv.index("--") + 1 :]
    assert rest == ["make", "test"]  # set on the init by prlimit(2) before it starts these
    assert p.init_rlimits and p.rlimits == (
        (resource.RLIMIT_CPU, 2),
        (resource.RLIMIT_FSIZE, MB),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0),
    )
    assert pairs(p.argv, "--info-fd") == ["7"] and pairs(p.argv, "--block-fd") == ["8"]
    assert (p.preexec_rlimits, p.preexec_cgroups) == (False, False)  # a vfork spawn
    fallback = plan(request(mode="fallback", home="/h"), host)
    assert fallback.argv[:6] == [
        "/usr/bin/setpriv",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
        "/usr/bin/prlimit",
    ]  # no init to set them on: prlimit in the chain
    assert (fallback.preexec_rlimits, fallback.preexec_cgroups, fallback.init_rlimits) == (
        False,
        True,
        False,
    )


def test_network_enabled_keeps_the_hosts_network_namespace() -> None:
    assert "--unshare-net" not in plan(request(network=True), ROOT_HOST).argv


def test_a_worker_that_is_not_root_runs_the_same_chain() -> None:
    p = plan(request(workspace="/home/u/ws", cwd="/home/u/ws"), USER_HOST)
    assert "setpriv" not in " ".join(p.argv)
    assert p.argv[p.argv.index("--") + 1 :] == ["make", "test"]
    assert pairs(p.argv, "--tmpfs")[-3:] == ["/tmp", "/run", "/dev/shm"]


def test_fallback_plan_drops_capabilities_keeps_the_uid_and_has_a_throwaway_home() -> None:
    p = plan(request(mode="fallback", home="/tmp/orch-home-x"), ROOT_HOST)
    assert p.mode == "fallback"
    assert p.argv[:5] == [
        "/usr/bin/setpriv",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]
    assert p.argv[-2:] == ["make", "test"] and "--reuid" not in p.argv
    assert "bwrap" not in " ".join(p.argv)
    assert p.env["HOME"] == p.env["TMPDIR"] == "/tmp/orch-home-x"


def test_asking_for_bubblewrap_without_it_is_an_input_error() -> None:
    with pytest.raises(ToolInputError, match="bwrap` is not installed"):
        plan(request(mode="bwrap"), dataclasses.replace(ROOT_HOST, bwrap=None))
    assert (
        plan(request(home="/h"), dataclasses.replace(ROOT_HOST, bwrap=None, is_root=False)).mode
        == "fallback"
    )


def test_environment_is_built_from_inputs_only_and_git_hardening_wins() -> None:
    env = scrub_env("/usr/bin", SANDBOX_HOME, {"CI": "1", "PATH": "/opt/bin"}, "c1")
    assert env == {
        "PATH": "/opt/bin",
        "HOME": SANDBOX_HOME,
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "CI": "1",
        **GIT_ENV,
        "SANDBOX_CALL_ID": "c1",
    }
    assert env["GIT_CONFIG_KEY_0"] == "core.hooksPath" and env["GIT_CONFIG_VALUE_0"] == "/dev/null"
    assert env["GIT_CONFIG_KEY_1"] == "core.fsmonitor" and env["GIT_CONFIG_VALUE_1"] == "false"


@pytest.mark.parametrize(
    "name",
    [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "BASH_ENV",
        "ENV",
        "GIT_DIR",
        "GIT_CONFIG_COUNT",
        "BASH_FUNC_ls%%",
        "SHELLOPTS",
        "SANDBOX_CALL_ID",
    ],
)
def test_variables_that_inject_code_are_refused(name: str) -> None:
    with pytest.raises(ToolInputError, match=f"sets {name}.*Remove them"):
        scrub_env("/usr/bin", SANDBOX_HOME, {name: "x"}, "c1")


def test_rlimits_leave_memory_and_processes_to_the_cgroup_when_there_is_one() -> None:
    lim = SandboxLimits(cpu_s=2.5, memory_mb=100, processes=64, open_files=50, file_size_mb=3)
    with_cg = dict(plan(request(limits=lim), ROOT_HOST).rlimits)
    assert with_cg == {
        resource.RLIMIT_CPU: 3,
        resource.RLIMIT_FSIZE: 3 * MB,
        resource.RLIMIT_NOFILE: 50,
        resource.RLIMIT_CORE: 0,
    }
    assert plan(request(limits=lim), ROOT_HOST).cgroup_limits == {"pids": 64, "memory": 100 * MB}
    without = dict(plan(request(limits=lim), USER_HOST).rlimits)
    assert without[resource.RLIMIT_AS] == 100 * MB and without[resource.RLIMIT_NPROC] == 64


def test_limits_come_from_the_policy_model_field_by_field() -> None:
    assert SandboxLimits.of(Limits(wall_s=5, processes=9)) == SandboxLimits(wall_s=5, processes=9)
    assert SandboxLimits.of(None) == SandboxLimits()


def test_doctor_report_says_what_the_fallback_does_not_contain() -> None:
    report = describe(dataclasses.replace(ROOT_HOST, bwrap=None, cgroups=Cgroups(why="ro")))
    assert report["mode"] == "fallback" and report["cgroups"]["usable"] is False
    gaps = " ".join(report["does_not_protect_against"])  # type: ignore[arg-type]
    assert "network" in gaps and "no usable cgroup (ro)" in gaps
    assert "own network namespace" in " ".join(describe(ROOT_HOST)["protects_against"])


def test_doctor_says_what_a_cgroup_migration_costs_and_which_host_setting_helps() -> None:
    def detail(host: Host) -> str:
        return str(describe(host)["cgroups"]["detail"])  # type: ignore[index]

    assert "RCU grace period" in detail(ROOT_HOST) and "rcu_expedited=1" in detail(ROOT_HOST)
    assert detail(dataclasses.replace(ROOT_HOST, fast_migration="rcu_expedited=1")).endswith(
        "fast (rcu_expedited=1)"
    )
    assert "grace period" not in detail(USER_HOST)


# -- real processes --------------------------------------------------------------------

HOST = sandbox.probe()
PY = SANDBOX_PY
NO_CGROUP = dataclasses.replace(HOST, cgroups=Cgroups(why="switched off by the test"))


def _need_bwrap() -> None:
    if HOST.bwrap is None:
        msg = "bubblewrap (bwrap) is not installed; apt-get install bubblewrap"
        if REQUIRE:
            pytest.fail(msg + " -- required because ORCH_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(msg)


@pytest.fixture(params=["bwrap", "fallback"])
def mode(request: pytest.FixtureRequest) -> str:
    if request.param == "bwrap":
        _need_bwrap()
    return str(request.param)


@pytest.fixture(params=["bwrap", "bwrap-rlimits", "fallback", "fallback-rlimits"])
def variant(request: pytest.FixtureRequest) -> tuple[str, Host]:
    """Both modes, with the call's cgroup and with rlimits alone."""
    name = str(request.param)
    if name.startswith("bwrap"):
        _need_bwrap()
    return name.split("-")[0], NO_CGROUP if name.endswith("rlimits") else HOST


class Box:
    """A workspace, with a canary file and a sibling folder next to it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.ws = tmp_path / "ws"
        self.ws.mkdir()
        (self.ws / "README").write_text("inside\n")
        self.canary = tmp_path / "canary.txt"
        self.canary.write_text("canary: do not touch\n")
        (tmp_path / "sibling").mkdir()
        (tmp_path / "sibling" / "data").write_text("sibling data\n")
        self.token = uuid.uuid4().hex[:16]
        self.before = self.outside()

    def outside(self) -> dict[str, tuple[int, int, bytes | None]]:
        found = {}
        for p in sorted(self.tmp.rglob("*")):
            if p == self.ws or self.ws in p.parents:
                continue
            st = p.lstat()
            found[str(p.relative_to(self.tmp))] = (
                st.st_mode,
                st.st_uid,
                p.read_bytes() if p.is_file() else None,
            )
        return found

    def run(
        self,
        mode: str,
        command: list[str] | str,
        host: Host | None = None,
        network: Any = None,
        **limits: Any,
    ) -> Any:
        """The result, or the ToolError the call raised."""
        step = ShellStep(command=command, timeout_s=limits.pop("timeout_s", 20))
        try:
            return run_shell(
                self.ws,
                step,
                limits=Limits(**limits),
                network=network,
                mode=mode,
                host=host or HOST,
            )  # type: ignore[arg-type]
        except ToolError as err:
            return err

    def assert_contained(self) -> None:
        assert self.canary.read_text() == "canary: do not touch\n"
        assert self.outside() == self.before
        assert running(self.token) == []
        for p in [self.ws, *self.ws.rglob("*")]:  # everything usable by the worker again
            assert p.lstat().st_uid == os.geteuid(), p


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    """Under pytest's tmp_path, which only root may enter: the command runs as
    the worker, so both modes use it as it is."""
    yield Box(tmp_path)


def py(code: str, token: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code) + f"\n# {token}\n"]


def test_a_fork_bomb_is_stopped_by_the_process_limit(box: Box, variant: tuple[str, Host]) -> None:
    mode, host = variant
    if host.cgroups.version is None and HOST.is_root:
        pytest.skip("documented: without a cgroup nothing limits a root worker's processes")
    counting = py(
        """
        import os, time
        n = 0
        try:
            while n < 1000:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                n += 1
        except OSError as err:
            print("stopped after", n, err.errno)
    """,
        box.token,
    )
    result = box.run(mode, counting, host=host, processes=64, wall_s=10)
    limited = host.cgroups.version is not None
    if limited:  # the cgroup counted the refused forks: a typed outcome, never "completed"
        assert isinstance(result, ResourceExceeded) and result.limit.startswith("processes=")
        result = result.result
    words = result.output.split()
    assert words[:2] == ["stopped", "after"] and int(words[2]) < 64 and int(words[3]) == 11
    started = time.monotonic()
    bomb = box.run(
        mode,
        ["bash", "-c", f"b() {{ b | b & }}; b; sleep 3 # {box.token}"],
        host=host,
        processes=64,
        wall_s=3,
    )
    assert time.monotonic() - started < 10
    if limited:
        assert isinstance(bomb, ResourceExceeded), bomb
        assert "processes limit (64 processes; seen:" in str(bomb)
    else:
        assert isinstance(bomb, (ToolTimeout, CommandFailed)) or bomb.exit_code == 0
    box.assert_contained()


def test_a_memory_hog_fails_without_hurting_the_worker(box: Box, variant: tuple[str, Host]) -> None:
    mode, host = variant
    result = box.run(
        mode, py("x = b'x' * (1 << 30)\nprint('allocated')", box.token), host=host, memory_mb=200
    )
    if host.cgroups.version is not None:  # the OOM kill is counted: a typed outcome
        assert isinstance(result, ResourceExceeded) and result.limit == "memory_mb=200 MB"
        assert "MB used, killed out of memory" in result.value
    else:
        assert isinstance(result, CommandFailed)
    assert "allocated" not in result.result.output
    box.assert_contained()


def test_infinite_output_is_stopped_at_the_output_limit(box: Box, mode: str) -> None:
    result = box.run(mode, ["sh", "-c", f"yes {box.token}"], output_bytes=1000, wall_s=60)
    assert isinstance(result, ResourceExceeded), result  # stopped at the limit, not the wall
    assert result.limit == "output_bytes=1000 bytes of output"
    out = result.result
    assert "... [truncated " in out.output and len(out.output.encode()) < 1100
    assert out.output_bytes > 1000
    box.assert_contained()


# Programs printing without end or past a limit, on stdout or stderr, from
# the command itself or a child it left running.
WRITERS = {
    "yes": "yes {t}",
    "printf loop": "while :; do printf '%s\\n' {t}; done",
    "stderr": "yes {t} >&2",
    "child": "(yes {t} &) ; sleep 30",
    "one burst": "head -c {n} /dev/zero | tr '\\0' x",
}


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(writer=st.sampled_from(sorted(WRITERS)), limit=st.integers(1, 300_000))
def test_output_past_the_limit_is_a_typed_outcome_and_keeps_nothing(
    box: Box, mode: str, writer: str, limit: int
) -> None:
    """The class: any way of printing more than `limits.output_bytes` ends as
    ResourceExceeded naming the limit and what was seen, never completed,
    and what the command wrote is not kept."""
    script = "echo made > made.txt; " + WRITERS[writer].format(t=box.token, n=limit + 4096)
    result = box.run(mode, ["sh", "-c", script], output_bytes=limit, wall_s=60)
    assert isinstance(result, ResourceExceeded), (writer, limit, result)
    assert result.limit == f"output_bytes={limit} bytes of output"
    assert f"more than {limit} bytes printed" in result.value
    assert result.result.output_bytes > limit
    assert not (box.ws / "made.txt").exists()
    box.assert_contained()


WRITES = {
    "dd files": "for i in $(seq {k}); do dd if=/dev/zero of=f$i bs=64K count={c} 2>/dev/null; done",
    "python": "python3 -c \"[open(f'p{{i}}', 'wb').write(b'x' * {c} * 65536) for i in range({k})]\"",
    "fallocate": "for i in $(seq {k}); do fallocate -l $(({c} * 65536)) a$i; done",
    "nested dirs": "for i in $(seq {k}); do mkdir -p d$i/e && head -c $(({c} * 65536)) /dev/zero > d$i/e/x; done",
}


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    how=st.sampled_from(sorted(WRITES)),
    files=st.integers(2, 12),
    chunks=st.integers(4, 16),
    linger=st.booleans(),
)
def test_writing_past_the_disk_limit_is_a_typed_outcome_and_keeps_nothing(
    box: Box, mode: str, how: str, files: int, chunks: int, linger: bool
) -> None:
    """The class: many files, each within `file_size_mb`, together past
    `limits.disk_mb`, made by any program, ending at once or staying on:
    ResourceExceeded with the limit and the megabytes seen; nothing kept."""
    size = files * chunks * 65536
    limit_mb = max(1, size // (1 << 20) - 1)
    if size <= limit_mb << 20:
        files += 8  # make sure it passes the limit
    script = WRITES[how].format(k=files, c=chunks) + ("; sleep 30" if linger else "")
    result = box.run(mode, ["sh", "-c", script], disk_mb=limit_mb, file_size_mb=2, wall_s=60)
    assert isinstance(result, ResourceExceeded), (how, files, chunks, result)
    assert result.limit == f"disk_mb={limit_mb} MB written"
    assert "MB written into the view" in result.value
    assert sorted(p.name for p in box.ws.iterdir()) == ["README"], "nothing kept"
    box.assert_contained()


@pytest.mark.parametrize("linger", [False, True])
def test_making_more_files_than_the_limit_is_a_typed_outcome_and_keeps_nothing(
    box: Box, mode: str, linger: bool
) -> None:
    """Empty files hold no bytes: past `limits.files` entries (files,
    folders, links, deletes) the command is stopped, while it runs or when it
    ends, and nothing is kept; deletes count, as each is a change to read."""
    script = (
        "mkdir -p a/b && for i in $(seq 150); do : > a/b/f$i; ln -s f$i a/l$i; done; rm README"
        + ("; sleep 30" if linger else "")
    )
    result = box.run(mode, ["sh", "-c", script], files=250, wall_s=60)
    assert isinstance(result, ResourceExceeded), result
    assert result.limit == "files=250 files, folders and deletes"
    assert int(result.value.split()[0]) > 250
    assert sorted(p.name for p in box.ws.iterdir()) == ["README"], "nothing kept"
    box.assert_contained()


def test_a_command_sleeping_forever_is_killed_at_the_wall_limit(box: Box, mode: str) -> None:
    started = time.monotonic()
    result = box.run(mode, py("import time; time.sleep(10 ** 6)", box.token), wall_s=1)
    assert isinstance(result, ToolTimeout) and result.result.exit_code == -9
    assert time.monotonic() - started < 60  # killed at the limit, not left to sleep
    box.assert_contained()


def test_a_daemon_does_not_outlive_the_call(box: Box, variant: tuple[str, Host]) -> None:
    mode, host = variant
    daemon = py(
        """
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                null = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                with open("daemon.pid.tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.rename("daemon.pid.tmp", "daemon.pid")
                while True:
                    time.sleep(1)
            os._exit(0)
        while not os.path.exists("daemon.pid"):
            time.sleep(0.01)
        print("daemon started")
    """,
        box.token,
    )
    result = box.run(mode, daemon, host=host, wall_s=10)
    assert result.output == "daemon started\n" and result.exit_code == 0
    pid = int((box.ws / "daemon.pid").read_text())
    assert running(box.token) == []
    if mode == "fallback":  # no pid namespace: the pid it wrote is ours to check
        assert not alive(pid)  # killed; the machine's init reaps it soon after
        deadline = time.monotonic() + 5
        with pytest.raises(ProcessLookupError):
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.01)
    box.assert_contained()


def test_a_command_trapping_term_is_killed_anyway(box: Box, mode: str) -> None:
    script = (
        f"trap '' TERM HUP INT; (trap '' TERM HUP INT; while :; do sleep 0.1; done) & "
        f"while :; do sleep 0.1; done # {box.token}"
    )
    started = time.monotonic()
    result = box.run(mode, ["sh", "-c", script], wall_s=1)
    assert isinstance(result, ToolTimeout) and time.monotonic() - started < 6
    box.assert_contained()


def test_a_huge_file_stops_at_the_file_size_limit(box: Box, mode: str) -> None:
    result = box.run(mode, ["dd", "if=/dev/zero", "of=big", "bs=1M", "count=50"], file_size_mb=2)
    assert isinstance(result, ResourceExceeded) and result.limit == "file_size_mb=2 MB per file"
    assert not (box.ws / "big").exists()  # a call stopped by a limit keeps nothing
    box.assert_contained()


def test_nothing_outside_the_workspace_can_be_written(box: Box, mode: str) -> None:
    """bubblewrap: the system is read-only and /tmp private (a write under the
    workspace's parents lands in that private /tmp, never in the real one).
    The fallback has no namespaces: as documented, its command writes
    wherever the worker can, so only the workspace's own guarantee is tried."""
    shared = {
        "tmp": Path(f"/tmp/orch-sandbox-probe-{box.token}"),
        "var-tmp": Path(f"/var/tmp/orch-sandbox-probe-{box.token}"),
        "dev-shm": Path(f"/dev/shm/orch-sandbox-probe-{box.token}"),
    }
    outside = {
        "etc": "/etc/orch-sandbox-probe",
        "usr": "/usr/orch-sandbox-probe",
        "canary": str(box.canary),
        "sibling": str(box.tmp / "sibling" / "data"),
        "next-to-ws": str(box.tmp / "new-file"),
        **{k: str(v) for k, v in shared.items()},
    }
    targets = {"inside": "inside.txt", **(outside if mode == "bwrap" else {})}
    code = f"""
        import json
        out = {{}}
        for name, path in {targets!r}.items():
            try:
                with open(path, "w") as f:
                    f.write("pwned")
                out[name] = "written"
            except OSError as err:
                out[name] = err.strerror
        print(json.dumps(out))
    """
    try:
        result = box.run(mode, py(code, box.token))
        got = json.loads(result.output)
        assert got["inside"] == "written" and (box.ws / "inside.txt").read_text() == "pwned"
        if mode == "bwrap":
            for name in ("etc", "usr"):
                assert got[name] != "written", name
            # /var/tmp is a private tmpfs, as /tmp is: written there, never on the host
            assert got["var-tmp"] == "written"
            assert [p for p in shared.values() if p.exists()] == []
            assert not Path("/etc/orch-sandbox-probe").exists()
    finally:
        for p in shared.values():
            p.unlink(missing_ok=True)
    box.assert_contained()


def test_the_workers_secrets_are_not_visible(
    box: Box, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"s3cret-{box.token}"
    monkeypatch.setenv("ORCH_SECRET", secret)
    # A process started now carries the secret in its environment, as a worker would.
    holder = subprocess.Popen(["sleep", "30"], env=dict(os.environ))
    try:
        result = box.run(
            mode,
            [
                "sh",
                "-c",
                f"env; cat /proc/*/environ /proc/{holder.pid}/environ 2>/dev/null | tr '\\0' '\\n'",
            ],
            timeout_s=10,
        )
        output = result.result.output if isinstance(result, CommandFailed) else result.output
        assert "HOME=" in output and secret not in output and "ORCH_SECRET" not in output
    finally:
        holder.kill()
        holder.wait()
    box.assert_contained()


def _connect(port: int) -> str:
    return f"""
        import socket
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", {port}))
            print("connected")
        except OSError as err:
            print("failed", err.strerror)
    """


def test_the_network_is_off_unless_the_policy_enables_it(box: Box) -> None:
    _need_bwrap()
    off = box.run("bwrap", py(_connect(6379), box.token))
    assert off.output.startswith("failed"), off.output
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
    except OSError:
        pass  # nothing listens here: only the "off" half is shown
    else:
        on = box.run("bwrap", py(_connect(6379), box.token), network=Network(enabled=True))
        assert on.output == "connected\n"
    box.assert_contained()


def test_git_runs_no_hooks_and_no_fsmonitor(box: Box, mode: str) -> None:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    subprocess.run([git, "init", "-q", str(box.ws)], check=True)
    hook = '#!/bin/sh\ntouch "$(git rev-parse --show-toplevel)/HOOK_RAN_$(basename $0)"\n'
    hooks = box.ws / ".git" / "hooks"
    custom = box.ws / "myhooks"
    custom.mkdir()
    for d in (hooks, custom):
        for name in ("pre-commit", "post-commit", "commit-msg"):
            (d / name).write_text(hook)
            (d / name).chmod(0o755)
    monitor = box.ws / "monitor.sh"
    monitor.write_text('#!/bin/sh\ntouch "$PWD/FSMONITOR_RAN"\n')
    monitor.chmod(0o755)
    subprocess.run([git, "-C", str(box.ws), "config", "core.hooksPath", str(custom)], check=True)
    subprocess.run([git, "-C", str(box.ws), "config", "core.fsmonitor", str(monitor)], check=True)
    commit = box.run(
        mode,
        [
            git,
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            f"x {box.token}",
        ],
    )
    assert not isinstance(commit, ToolError), commit
    status = box.run(mode, [git, "status", "--porcelain"])
    assert not isinstance(status, ToolError), status
    log = subprocess.run(
        [git, "-C", str(box.ws), "log", "--format=%s"],
        capture_output=True,
        text=True,
        check=True,
        env={"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(box.tmp / "sibling")},
    )
    assert log.stdout == f"x {box.token}\n"
    assert (
        sorted(p.name for p in box.ws.iterdir() if p.name.startswith(("HOOK_RAN", "FSMONITOR")))
        == []
    )
    box.assert_contained()


def test_ownership_never_changes_and_new_files_take_their_folders_owner(
    box: Box, mode: str
) -> None:
    if not HOST.is_root:
        pytest.skip("the worker is not root: it cannot own files of other users")
    other = box.ws / "owned-by-1234"
    other.write_text("x")
    sub = box.ws / "theirs"
    sub.mkdir()
    # Their modes: only the owner may write. The command writes as the
    # worker's file tools do (bubblewrap: root's file powers kept; the
    # fallback: no capability, so it needs the modes to allow it).
    other.chmod(0o644 if mode == "bwrap" else 0o666)
    sub.chmod(0o755 if mode == "bwrap" else 0o777)
    for p in (other, sub):
        os.chown(p, 1234, 1234)
    before = {p: (p.lstat().st_uid, p.lstat().st_gid) for p in box.ws.rglob("*")}
    result = box.run(
        mode,
        ["sh", "-c", "id -u > uid; echo y >> owned-by-1234; echo hi > theirs/f; echo ok"],
    )
    assert result.output == "ok\n"
    assert (box.ws / "uid").read_text() == f"{os.geteuid()}\n"  # the worker's own uid
    assert other.read_text() == "xy\n"
    assert {p: (p.lstat().st_uid, p.lstat().st_gid) for p in before} == before
    assert (box.ws / "theirs/f").lstat().st_uid == 1234  # made in their folder
    assert (box.ws / "uid").lstat().st_uid == os.geteuid()
    for p in (other, sub, box.ws / "theirs/f"):
        os.chown(p, os.geteuid(), os.getegid())
    box.assert_contained()


def test_no_cgroup_is_left_behind(box: Box, mode: str) -> None:
    if HOST.cgroups.version is None:
        pytest.skip(f"no usable cgroup here: {HOST.cgroups.why}")
    parents = {p for p in (HOST.cgroups.pids, HOST.cgroups.memory) if p}

    def ours() -> dict[str, list[str]]:
        # Calls of this process only (`<pid>-<call>`): other runs on the machine
        # have cgroups of their own under the same parent. The standby's are
        # the next call's, holding the standby alone.
        mine = f"{os.getpid()}-"
        sandbox_standby.settle()
        ready = sandbox_standby._ready.get(os.getpid())
        next_call = f"{mine}{ready[1].call_id}" if ready else None
        if ready:
            for cg in ready[1].cgroups:
                assert (cg / "cgroup.procs").read_text().split() == [str(ready[1].proc.pid)]
        return {
            p: sorted(e for e in os.listdir(p) if e.startswith(mine) and e != next_call)
            for p in parents
        }

    before = ours()
    box.run(mode, ["sh", "-c", "sleep 100 & sleep 100"], wall_s=0.5)
    assert ours() == before
    box.assert_contained()


def test_a_call_runs_in_the_standby_made_in_its_cgroups_between_calls(box: Box) -> None:
    _need_bwrap()
    if HOST.cgroups.version is None or sandbox_standby.PERL is None:
        pytest.skip(f"no standby here: {HOST.cgroups.why}, perl {sandbox_standby.PERL}")
    box.run("bwrap", ["true"])
    sandbox_standby.settle()
    ready = sandbox_standby._ready[os.getpid()][1]
    for cg in ready.cgroups:  # made and joined between calls
        assert (cg / "cgroup.procs").read_text().split() == [str(ready.proc.pid)]
    # The command sees itself in the standby's cgroups (forked there by
    # bubblewrap's init, never moved) and the limits the call wrote.
    result = box.run("bwrap", ["sh", "-c", "cat /proc/self/cgroup"], processes=77)
    assert f"{os.getpid()}-{ready.call_id}" in result.output
    assert ready.proc.returncode is not None  # it became the call's bubblewrap and was reaped
    sandbox_standby.settle()  # the emptied cgroups are removed after the call returns
    assert not any(cg.exists() for cg in ready.cgroups)
    box.assert_contained()


def test_the_command_leads_a_session_of_its_own_and_bubblewrap_a_process_group(
    box: Box, mode: str
) -> None:
    # No controlling terminal for the command to inject keystrokes into, and
    # no signal sent to the worker's process group reaches the call.
    # The command's session is bubblewrap's init's (`--new-session`) or its
    # own (the fallback): no controlling terminal (tty_nr 0).
    code = (
        "import os, time; stat = open('/proc/self/stat').read().rsplit(')', 1)[1].split();"
        "print(os.getsid(0) in (1, os.getpid()), stat[4]); time.sleep(2)"
    )
    call = ThreadPoolExecutor(1).submit(box.run, mode, py(code, box.token))
    first = None
    deadline = time.monotonic() + 10
    while first is None and time.monotonic() < deadline:
        ours = [p for p in running(box.token) if _ppid(p) == os.getpid()]
        first = ours[0] if ours else None
    assert first is not None  # the call's first process: bubblewrap, or the fallback's
    assert os.getpgid(first) == first != os.getpgid(0)
    if mode == "bwrap":  # in the worker's session (no autogroup of its own)
        assert os.getsid(first) == os.getsid(0)
    else:
        assert os.getsid(first) == first
    assert call.result().output == "True 0\n"
    box.assert_contained()


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


@pytest.mark.parametrize("memory_mb", [64, 8192])
def test_a_standby_made_with_the_last_calls_limits_gets_the_next_calls_own(
    box: Box, memory_mb: int
) -> None:
    _need_bwrap()
    if HOST.cgroups.version != "v1" or sandbox_standby.PERL is None:
        pytest.skip(f"no v1 standby here: {HOST.cgroups.why}, perl {sandbox_standby.PERL}")
    sandbox_standby.settle()  # one being made for an earlier call is ready first
    box.run("bwrap", ["true"], memory_mb=512, processes=50)  # the next standby gets these
    sandbox_standby.settle()
    ready = sandbox_standby._ready[os.getpid()][1]
    pids_cg, memory_cg = ready.cgroups
    assert (pids_cg / "pids.max").read_text() == "51\n"  # written between calls
    assert (memory_cg / "memory.limit_in_bytes").read_text() == f"{512 * MB}\n"
    # A call with other limits (lower or higher: v1 orders the memory and
    # memory+swap limits) writes its own before its command starts.
    script = f"cat {pids_cg}/pids.max {memory_cg}/memory.limit_in_bytes"
    script += f" {memory_cg}/memory.memsw.limit_in_bytes"
    result = box.run("bwrap", ["sh", "-c", script], memory_mb=memory_mb, processes=9)
    assert result.output.split() == ["10", str(memory_mb * MB), str(memory_mb * MB)]
    assert ready.proc.returncode is not None  # it was the standby's
    box.assert_contained()


def test_doctor_says_which_sandbox_is_active(tmp_path: Path) -> None:
    env = shape_env(tmp_path)
    report = json.loads(cli(env, "doctor", "--json").stdout)
    assert report["sandbox"] == json.loads(json.dumps(describe(HOST)))
    text = cli(env, "doctor").stdout
    assert ("sandbox: bubblewrap" if HOST.bwrap else "sandbox: fallback") in text
    assert "does not protect against:" in text


def test_cgroups_of_a_worker_that_died_are_removed_at_the_next_probe() -> None:
    if HOST.cgroups.version is None:
        pytest.skip(f"no usable cgroup here: {HOST.cgroups.why}")
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid no process has now
    stale = [Path(p, f"{dead.pid}-leftover") for p in {HOST.cgroups.pids, HOST.cgroups.memory} if p]
    for d in stale:
        d.mkdir()
    assert sandbox_host._probe_cgroups().version == HOST.cgroups.version
    assert [d for d in stale if d.exists()] == []


@pytest.mark.parametrize(
    ("code", "hits", "limit"),
    [
        (0, {"forks_refused": 3, "processes_peak": 64}, "processes"),
        (137, {"oom_kills": 1, "memory_peak": 200 << 20}, "memory_mb"),
        (-signal.SIGXCPU, {}, "cpu_s"),
        (128 + signal.SIGXCPU, {}, "cpu_s"),
        (-signal.SIGKILL, {}, "cpu_s"),  # the hard limit's kill, with the CPU used
        (-signal.SIGXFSZ, {}, "file_size_mb"),
        (-signal.SIGKILL, {"output_over": 70_000}, "output_bytes"),
        (0, {"disk_bytes": 300 << 20}, "disk_mb"),
        (0, {"files_written": 200_001}, "files"),
    ],
)
def test_a_limit_that_stopped_a_command_is_named_with_what_was_seen(
    code: int, hits: dict[str, int], limit: str
) -> None:
    from orchestrator.tools.shell import ShellResult, exceeded

    lim = Limits(cpu_s=5, processes=64, memory_mb=200)
    over = exceeded(ShellResult(exit_code=code, cpu_s=5.0), "bwrap", hits, lim)
    assert isinstance(over, ResourceExceeded) and over.limit.startswith(limit + "=")
    assert f"limits.{limit}" in str(over) and "seen:" in str(over)
    assert over.result.exit_code == code
    assert exceeded(ShellResult(exit_code=0, cpu_s=0.1), "bwrap", {}, lim) is None
    quiet = ShellResult(exit_code=1, cpu_s=0.1)
    assert exceeded(quiet, "bwrap", {"processes_peak": 3}, lim) is None


@pytest.mark.parametrize(
    ("command", "limits", "limit"),
    [
        ("yes", {"output_bytes": 5000}, "output_bytes limit (5000 bytes of output;"),
        (
            "; ".join(f"head -c 700000 /dev/zero >> f{i}" for i in range(4)),
            {"disk_mb": 2},
            "disk_mb limit (2 MB written;",
        ),
        (
            "python3 -c \"import os; os.mkdir('m'); [open(f'm/{i}', 'w') for i in range(300)]\"",
            {"files": 200},
            "files limit (200 files, folders and deletes;",
        ),
    ],
)
def test_a_run_stopped_by_output_or_disk_is_recorded_as_resource_exceeded(
    tmp_path: Path, command: str, limits: dict[str, int], limit: str
) -> None:
    """Through the runner: ToolCallFailed with error ResourceExceeded, the
    limit and the value seen in its message, the session failed (never
    completed), nothing applied; the one ResourceExceeded type, so the exit
    code of every other limit."""
    from events.replay import replay
    from events.store import open_store
    from tests.factories import run_one_step

    work = tmp_path / "repo"
    work.mkdir()
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    step = ShellStep(command=["sh", "-c", command], timeout_s=60)
    sid, status = run_one_step(
        store, work, step, policy={"commands": {"default": "allow"}, "limits": limits}
    )
    events = list(store.read_stream(sid))
    failures = [e.payload for e in events if e.type == "ToolCallFailed"]
    assert len(failures) == 1, [str(e.payload)[:400] for e in events]
    failed = failures[0]
    assert status == "failed" and failed.error == "ResourceExceeded", failed
    assert limit in failed.message and "seen:" in failed.message
    assert replay(store, sid).session.status == "failed"
    assert list(work.iterdir()) == []


def test_a_command_reads_nothing_of_the_host_but_the_system_and_its_workspace(
    tmp_path: Path,
) -> None:
    """The view is an allow-list: the system folders and a world-readable
    /etc. The worker's home (keys, other checkouts), its state folder (the
    event store, the key file) and files only root may read are not there."""
    _need_bwrap()
    ws = tmp_path / "ws"
    ws.mkdir()
    secret_dir = Path.home() / f".orch-test-secret-{os.getpid()}"
    secret_dir.mkdir(mode=0o700)
    (secret_dir / "id_rsa").write_text("PRIVATE KEY\n")
    private_etc = [p for p, is_dir in private_entries("/etc", 20_000) if not is_dir][:3]
    code = f"""
        import json, os
        out = {{}}
        for p in {[str(secret_dir / "id_rsa"), str(ROOT / "pyproject.toml"), *private_etc]!r}:
            try:
                out[p] = open(p).read()
            except OSError as err:
                out[p] = err.strerror
        print(json.dumps(out))
    """
    try:
        got = json.loads(
            run_shell(ws, ShellStep(command=py(code, "t")), host=HOST, apply=False).output
        )
    finally:
        shutil.rmtree(secret_dir)
    assert got[str(secret_dir / "id_rsa")] == "No such file or directory"
    assert got[str(ROOT / "pyproject.toml")] == "No such file or directory"
    assert all(got[p] == "" for p in private_etc), got  # shown empty


def test_of_sys_a_command_sees_only_what_runtimes_read(tmp_path: Path) -> None:
    """Of /sys, the CPU, NUMA, cgroup and huge-page folders are shown (a
    runtime counts its CPUs and reads its cgroup's limits); the rest (firmware
    tables, serial numbers, which a root worker's command could read by owner
    permission) is not there."""
    _need_bwrap()
    ws = tmp_path / "ws"
    ws.mkdir()
    hidden = [p for p in ("/sys/firmware", "/sys/class", "/sys/kernel/mm") if os.path.exists(p)]
    code = f"""
        import json, os
        print(json.dumps({{
            "cpus": os.cpu_count(),
            "online": open("/sys/devices/system/cpu/online").read().strip(),
            "cgroup": os.path.isdir("/sys/fs/cgroup"),
            "hidden": {{p: os.path.exists(p) for p in {hidden!r}}},
            "sys": sorted(os.listdir("/sys")),
        }}))
    """
    got = json.loads(run_shell(ws, ShellStep(command=py(code, "t")), host=HOST, apply=False).output)
    assert got["cpus"] == os.cpu_count()
    assert got["online"] == Path("/sys/devices/system/cpu/online").read_text().strip()
    assert got["cgroup"] is os.path.isdir("/sys/fs/cgroup")
    shown = [d for d in SYSFS_SHOWN if os.path.isdir(d)]
    # A folder above a shown one is there, holding only the way to it.
    assert got["hidden"] == {p: any(d.startswith(p + "/") for d in shown) for p in hidden}
    assert set(got["sys"]) <= {"devices", "fs", "kernel"}


def test_a_root_workers_command_works_a_checkout_another_user_owns(tmp_path: Path) -> None:
    """A user's clone under a root worker: the command edits files only their
    owner may write, unpacks an archive with its owners (`tar` as root keeps
    them) and runs git there (no "dubious ownership"), as the worker's own
    file tools could. What it changed is applied; no owner changes hands."""
    _need_bwrap()
    if not HOST.is_root:
        pytest.skip("the worker is not root: it cannot own files of other users")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "app.py").write_text("x = 1\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-C", str(ws)]
    subprocess.run([*git[:-2], "init", "-q", str(ws)], check=True)
    subprocess.run([*git, "add", "app.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.txt").write_text("packed\n")
    os.chown(src / "data.txt", 4321, 4321)
    subprocess.run(["tar", "-C", str(tmp_path), "-cf", str(ws / "pack.tar"), "src"], check=True)
    subprocess.run(["chown", "-R", "1234:1234", str(ws)], check=True)
    (ws / "app.py").chmod(0o644)
    script = (
        "echo 'x = 2' > app.py && tar -xf pack.tar && rm pack.tar "
        "&& git status --porcelain && echo done"
    )
    result = run_shell(ws, ShellStep(command=["sh", "-c", script], timeout_s=60), host=HOST)
    assert "dubious" not in result.output and result.output.endswith("done\n"), result.output
    assert " M app.py" in result.output
    assert (ws / "app.py").read_text() == "x = 2\n"
    assert (ws / "src/data.txt").read_text() == "packed\n"
    assert (ws / "app.py").stat().st_uid == 1234  # rewritten, still theirs
    assert (ws / "src").stat().st_uid == 1234  # made in their folder: theirs

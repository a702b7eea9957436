"""The shell tool with real subprocesses: scrubbed environment, time limit that
kills the whole process group, bounded output, failures carrying their output."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from orchestrator.errors import ToolInputError, ToolTimeout
from orchestrator.run.steps import ShellStep
from orchestrator.sandbox.limits import SandboxLimits
from orchestrator.sandbox.runtime import GIT_ENV, probe
from orchestrator.tools.shell import CommandFailed, run_shell
from tests.processes import running
from tests.sandbox_helpers import SANDBOX_PY

# The command runs as an unprivileged uid when the tests run as root, so it gets
# the python it can reach on the sandbox's PATH (a pyenv under /root is not).
PY = SANDBOX_PY


def token_sleep() -> tuple[str, str]:
    """A `sleep` argument no other process on the machine has: (argument, token)."""
    digits = str(uuid.uuid4().int)[:12]
    return f"30.{digits}", digits


def test_command_output_exit_code_and_usage_are_reported(tmp_path: Path) -> None:
    result = run_shell(tmp_path, ShellStep(command=[PY, "-c", "print('hi'); sum(range(10**6))"]))
    assert (result.output, result.output_bytes, result.exit_code) == ("hi\n", 3, 0)
    assert result.cpu_s > 0 and result.duration_s > 0


def test_stderr_is_merged_into_the_output(tmp_path: Path) -> None:
    result = run_shell(tmp_path, ShellStep(command=["sh", "-c", "echo out; echo err >&2"]))
    assert result.output == "out\nerr\n"


def test_environment_is_scrubbed_to_path_home_lang_and_the_steps_env(tmp_path: Path) -> None:
    """The sandbox gives a throwaway HOME (no longer the workspace), TMPDIR, git
    hardening and the call's marker on top of PATH, LANG and the step's env."""
    assert "PYTEST_CURRENT_TEST" in os.environ  # set by pytest in this process
    result = run_shell(
        tmp_path, ShellStep(command=["env"], env={"FOO": "bar"}), env_base={"CI": "1"}
    )
    env = dict(line.split("=", 1) for line in result.output.splitlines())
    assert env.pop("PWD", None) in (None, str(tmp_path.resolve()))
    home = env.pop("HOME")
    assert home != str(tmp_path.resolve()) and not Path(home).exists()  # thrown away
    assert len(env.pop("SANDBOX_CALL_ID")) == 32
    assert env == {
        "PATH": probe().path,
        "LANG": "C.UTF-8",
        "TMPDIR": env["TMPDIR"],
        "CI": "1",
        "FOO": "bar",
        **GIT_ENV,
    }


def test_step_env_can_replace_path(tmp_path: Path) -> None:
    result = run_shell(tmp_path, ShellStep(command=["/usr/bin/env"], env={"PATH": "/nowhere"}))
    assert "PATH=/nowhere\n" in result.output
    with pytest.raises(ToolInputError, match="not found on PATH '/nowhere'"):
        run_shell(tmp_path, ShellStep(command=["env"], env={"PATH": "/nowhere"}))


def test_stdin_is_empty(tmp_path: Path) -> None:
    assert run_shell(tmp_path, ShellStep(command=["cat"], timeout_s=5)).output == ""


def test_command_runs_in_its_cwd_inside_the_workspace(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    result = run_shell(tmp_path, ShellStep(command=["pwd"], cwd="sub"))
    assert result.output == f"{(tmp_path / 'sub').resolve()}\n"


def test_cwd_outside_the_workspace_is_refused(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    with pytest.raises(ToolInputError, match="climbs out"):
        run_shell(ws, ShellStep(command=["pwd"], cwd=".."))
    (ws / "up").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ToolInputError, match="goes through the symlink .* outside the workspace"):
        run_shell(ws, ShellStep(command=["pwd"], cwd="up"))
    with pytest.raises(ToolInputError, match="not a directory"):
        run_shell(ws, ShellStep(command=["pwd"], cwd="missing"))


def test_missing_program_says_path_was_scrubbed(tmp_path: Path) -> None:
    with pytest.raises(
        ToolInputError,
        match=r"program 'no-such-tool' was not found on PATH .* "
        r"environment is scrubbed \(PATH, HOME, LANG",
    ):
        run_shell(tmp_path, ShellStep(command="no-such-tool --version"))


def test_a_program_found_before_is_looked_up_again_once_it_is_gone(tmp_path: Path) -> None:
    tools, ws = tmp_path / "tools", tmp_path / "ws"
    for d in (tools / "bin", ws):
        d.mkdir(parents=True)
    tool = tools / "bin" / "my-tool"
    tool.write_text("#!/bin/sh\necho first\n")
    tool.chmod(0o755)
    step = ShellStep(command=["my-tool"])
    assert run_shell(ws, step, toolchains=(str(tools),)).output == "first\n"
    tool.unlink()
    with pytest.raises(ToolInputError, match="'my-tool' was not found on PATH"):
        run_shell(ws, step, toolchains=(str(tools),))
    tool.mkdir()  # a folder by that name is not the program either
    with pytest.raises(ToolInputError, match="'my-tool' was not found on PATH"):
        run_shell(ws, step, toolchains=(str(tools),))


def test_non_executable_program_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "script.sh").write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(ToolInputError, match="not executable"):
        run_shell(tmp_path, ShellStep(command=["./script.sh"]))


def test_non_zero_exit_raises_command_failed_carrying_the_output(tmp_path: Path) -> None:
    with pytest.raises(
        CommandFailed,
        match=r"(?s)exited with code 3, not one of ok_exit_codes "
        r"\[0\].*Last output:\nbroken",
    ) as info:
        run_shell(tmp_path, ShellStep(command=["sh", "-c", "echo broken; exit 3"]))
    assert info.value.result.exit_code == 3
    assert info.value.result.output == "broken\n"
    assert info.value.error == "CommandFailed"


def test_ok_exit_codes_make_a_non_zero_exit_a_success(tmp_path: Path) -> None:
    result = run_shell(tmp_path, ShellStep(command=["sh", "-c", "exit 1"], ok_exit_codes=(0, 1)))
    assert result.exit_code == 1


def test_a_command_killed_by_a_signal_fails_naming_the_signal(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match="was killed by SIGTERM"):
        run_shell(tmp_path, ShellStep(command=["sh", "-c", "kill -TERM $$"]))


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    arg, token = token_sleep()
    script = f"sleep {arg} & echo started; wait"
    started = time.monotonic()
    with pytest.raises(ToolTimeout, match=r"time limit of 0.5 s .* raise `timeout_s`") as info:
        run_shell(tmp_path, ShellStep(command=["sh", "-c", script], timeout_s=0.5))
    assert time.monotonic() - started < 5
    assert info.value.result.output == "started\n"  # partial output is kept
    assert info.value.result.exit_code == -9
    assert running(token) == []  # gone when the call returns


def test_timeout_holds_for_a_command_that_never_stops_printing(tmp_path: Path) -> None:
    started = time.monotonic()
    endless = SandboxLimits(output_bytes=1 << 40)  # the time limit comes first
    with pytest.raises(ToolTimeout) as info:
        run_shell(
            tmp_path,
            ShellStep(command=["yes"], timeout_s=0.5, max_output_bytes=10),
            limits=endless,
        )
    assert time.monotonic() - started < 5
    assert info.value.result.output.startswith("y\ny\ny\n")
    assert info.value.result.output_bytes > 10


def test_children_left_behind_are_killed_when_the_command_exits(tmp_path: Path) -> None:
    arg, token = token_sleep()
    result = run_shell(
        tmp_path, ShellStep(command=["sh", "-c", f"sleep {arg} & echo done"], timeout_s=10)
    )
    assert result.output == "done\n" and result.duration_s < 10
    assert running(token) == []


def test_output_keeps_head_and_tail_within_the_cap_and_counts_everything(tmp_path: Path) -> None:
    code = "import sys\nfor i in range(10000): print(f'line {i:05d} é')"
    result = run_shell(tmp_path, ShellStep(command=[PY, "-c", code], max_output_bytes=200))
    assert result.output_bytes == sum(len(f"line {i:05d} é\n".encode()) for i in range(10000))
    head, rest = result.output.split("\n... [truncated ", 1)
    dropped, tail = rest.split(" bytes] ...\n", 1)
    assert head.startswith("line 00000 é\nline 00001")
    assert tail.endswith("line 09999 é\n")
    assert len(head.encode()) + len(tail.encode()) <= 200
    assert int(dropped) == result.output_bytes - len(head.encode()) - len(tail.encode())


def test_huge_output_does_not_use_memory(tmp_path: Path) -> None:
    """A command printing 100 MB: the output is capped, every byte counted, and
    the reading process stays small (measured in a fresh interpreter, by its own
    VmHWM: ru_maxrss would include the pytest process it was forked from)."""
    script = textwrap.dedent(f"""
        import re
        from pathlib import Path
        from orchestrator.run.steps import ShellStep
        from orchestrator.sandbox.limits import SandboxLimits
        from orchestrator.tools.shell import run_shell
        code = "import sys\\nfor _ in range(100): sys.stdout.buffer.write(b'x' * (1 << 20))"
        r = run_shell(
            Path({str(tmp_path)!r}),
            ShellStep(command=[{PY!r}, "-c", code]),
            limits=SandboxLimits(output_bytes=200 << 20),  # under the limit: all printed
        )
        status = Path("/proc/self/status").read_text()
        rss_mb = int(re.search(r"VmHWM:\\s+(\\d+) kB", status)[1]) // 1024
        print(r.output_bytes, len(r.output.encode()), rss_mb)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    total, kept, rss_mb = map(int, proc.stdout.split())
    assert total == 100 * (1 << 20)
    assert kept < 64 * 1024 + 100
    assert rss_mb < 90, f"reading 100 MB of output peaked at {rss_mb} MB"

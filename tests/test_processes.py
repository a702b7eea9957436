"""The tests' own process hygiene: a worker or server a test starts dies with
the test process, even when that process is killed with SIGKILL (an
interrupted CI run must not leave workers polling the brokers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from tests.ops_helpers import wait_until
from tests.processes import alive


def test_a_child_started_with_dies_with_us_ends_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import subprocess, sys, time
                from tests.processes import dies_with_us
                child = subprocess.Popen(["sleep", "300"], preexec_fn=dies_with_us())
                print(child.pid, flush=True)
                time.sleep(300)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    wait_until("the child to die with its parent", lambda: not alive(child), timeout=30)

"""The differential tester's bounded run (the longer one: `make fuzz-shell`):
shell lines from the grammar of the bypass classes and mutations of the
adversarial corpus, decided by the policy, and those it does not deny run in
real bash (bubblewrap, every program a recording shim, `strace -f -e
trace=execve`). Every program bash starts must be one the analysis reported.

Needs bubblewrap and strace: skips without them, and FAILS when
ORCH_REQUIRE_SERVICES=1 (as .ci/run sets).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.conftest import REQUIRE
from tests.security.differential import check, grammar
from tests.security.differential.sandbox import Box, available, execs, make_box

SEED = 16
LINES = 2500


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    why = available()
    if why:
        if REQUIRE:
            pytest.fail(f"{why} -- required because ORCH_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(why)
    b, root = make_box()
    try:
        yield b
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_box_sees_what_bash_starts_even_when_hidden(box: Box):
    hidden, startup, plain = box.run(
        [
            "printf -v 'a[$(id)]' x",
            "HOME=/opt/work bash -l -c true",
            "ls | xargs; /bin/rm -rf /",
        ]
    )
    assert "id" in hidden.started
    assert grammar.PAYLOAD != "canary" and "canary" in startup.started
    assert {"ls", "echo", "rm"} <= set(plain.started)
    names = check.reported("printf -v 'a[$(id)]' x")[2]
    assert check.compare(hidden, names, "allow") is not None  # would be an escape


def test_bash_starts_only_programs_the_analysis_reported(box: Box):
    rep = check.run(box, grammar.lines(SEED, LINES, check.corpus()))
    print(f"differential seed {SEED}: {rep.summary()}")
    shown = [f"{e.line!r}: bash started {e.missed}, reported {e.reported}" for e in rep.escapes]
    assert not rep.escapes, "\n".join(shown[:20])
    assert rep.generated > LINES * 0.8 and rep.ran > 300, rep.summary()


def test_the_trace_reader_joins_calls_that_processes_running_at_once_split():
    trace = (
        '5  execve("/opt/real/bash", ["bash", "-c", "ls | wc"], 0x1 /* 3 vars */) = 0\n'
        '6  execve("/usr/bin/ls", ["ls"], 0x2 /* 3 vars */ <unfinished ...>\n'
        '7  execve("/usr/bin/wc", ["wc"], 0x3 /* 3 vars */) = 0\n'
        "6  <... execve resumed>)  = 0\n"
        '8  execve("/usr/bin/nope", ["nope"], 0x4 /* 3 vars */) = -1 ENOENT (No such file)\n'
    )
    assert execs(trace) == ["/opt/real/bash", "/usr/bin/wc", "/usr/bin/ls"]

"""One line of each bypass class of issue 16 through the real runner and
store, and through the CLI: denied before anything runs, recorded as
`PermissionDecided(deny)` naming the rule, exit 3, and the file its hidden
command would have made is not there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from events.envelope import new_id
from events.replay import replay
from events.store import open_store
from orchestrator.run.runner import Runner, Ticket
from orchestrator.run.steps import ShellStep
from tests.cli_helpers import cli, shape_env

# Each would run `touch pwned` in bash (a login shell through `.bash_profile`).
CLASSES = [
    ('echo "$\\\n(sudo touch pwned)"', "deny-sudo"),  # seen once joined
    ("printf -v 'a[$(touch pwned)]' x", "shell:arith-code"),
    ("[[ -v 'a[$(touch pwned)]' ]]", "shell:arith-code"),
    ("x='$(touch pwned)'; echo ${x@P}", "shell:prompt-expansion"),
    ("cat <<EOF\n'`touch pwned`'\nEOF", "shell:heredoc-code"),
    ("HOME=. bash -l -c true", "shell:startup-env"),
    ("true && " * 2000 + "touch pwned", "shell:too-long"),
    ("echo " + "$(echo " * 60 + "x" + ")" * 60 + "; touch pwned", "shell:too-deep"),
]


def _ticket(work: Path, step: ShellStep) -> Ticket:
    return Ticket(
        job_id=new_id(),
        session_id=new_id(),
        target="repo",
        path=str(work),
        steps=(step.label,),
        sessions_total=1,
    )


@pytest.mark.parametrize(("line", "rule"), CLASSES, ids=[r for _, r in CLASSES])
def test_each_class_is_denied_by_the_runner_before_anything_runs(
    tmp_path: Path, line: str, rule: str
):
    if rule == "shell:too-long":
        line = "true && " * 9000 + "touch pwned"
    work = tmp_path / "repo"
    work.mkdir()
    (work / ".bash_profile").write_text("touch pwned\n")
    store = open_store(str(tmp_path / "events.sqlite"), upgrade=True)
    step = ShellStep(command=["bash", "-c", line])
    ticket = _ticket(work, step)
    assert Runner(store, "worker:test").run_step(ticket, 0, step, last=True) == "failed"
    state = replay(store, ticket.session_id)
    [entry] = state.ledger.entries
    assert (entry.decision, entry.rule_id) == ("deny", rule)
    decided = [e for e in store.read_stream(ticket.session_id) if e.type == "PermissionDecided"]
    assert [e.payload.decision for e in decided] == ["deny"]
    assert not any(e.type == "ToolCallStarted" for e in store.read_stream(ticket.session_id))
    assert not (work / "pwned").exists()


def test_the_cli_exits_3_and_names_the_rule(tmp_path: Path):
    env = shape_env(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    out = cli(env, "sandbox", "run", "-w", str(ws), "--json", "--", "bash", "-c", CLASSES[1][0])
    assert out.returncode == 3, out.stderr
    assert json.loads(out.stdout)["rule_id"] == "shell:arith-code"
    assert not (ws / "pwned").exists()


def test_a_login_shell_reads_the_throwaway_home_not_the_workspace(tmp_path: Path):
    """Allowed as it is, `bash -l` reads profile files from the sandbox's
    throwaway HOME: the workspace's `.bash_profile` never runs."""
    env = shape_env(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".bash_profile").write_text("touch pwned\n")
    (ws / ".profile").write_text("touch pwned\n")
    out = cli(env, "sandbox", "run", "-w", str(ws), "--", "bash", "-l", "-c", 'echo "$HOME"')
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() not in ("", str(ws))
    assert not (ws / "pwned").exists()

"""`orchestrator fs ...` and `orchestrator sandbox run`: one call through the
policy, the runner and the store, with the exit codes jobs have."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_helpers import cli, cli_json, shape_env


def _ws(tmp_path: Path) -> tuple[dict[str, str], Path]:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("hello\n")
    (ws / ".env").write_text("TOKEN=hunter2\n")
    return shape_env(tmp_path), ws


def test_fs_reads_lists_and_writes_but_never_shows_secrets(tmp_path: Path):
    env, ws = _ws(tmp_path)
    read = cli(env, "fs", "read", "a.txt", "-w", str(ws))
    assert (read.returncode, read.stdout) == (0, "hello\n")
    secret = cli(env, "fs", "read", ".env", "-w", str(ws), "--json")
    assert secret.returncode == 3
    data = json.loads(secret.stdout)
    assert (data["decision"], data["rule_id"]) == ("deny", "deny-secrets")
    assert "hunter2" not in secret.stdout + secret.stderr
    listed = cli(env, "fs", "list", "-w", str(ws))
    assert listed.stdout == "a.txt\n"  # .env is not even listed
    wrote = cli(env, "fs", "write", "sub/b.txt", "--content", "new\n", "-w", str(ws))
    assert wrote.returncode == 0 and (ws / "sub" / "b.txt").read_text() == "new\n"
    escape = cli(env, "fs", "write", "../outside.txt", "--content", "x", "-w", str(ws))
    assert escape.returncode != 0 and not (tmp_path / "outside.txt").exists()


def test_fs_delete_waits_for_approval_unless_elevated(tmp_path: Path):
    env, ws = _ws(tmp_path)
    held = cli_json(env, "fs", "delete", "a.txt", "-w", str(ws))
    assert (held["status"], held["rule_id"]) == ("waiting", "destructive-delete")
    assert (ws / "a.txt").exists()
    [waiting] = cli_json(env, "pending")
    assert waiting["session_id"] == held["session_id"]
    gone = cli(env, "fs", "delete", "a.txt", "-w", str(ws), "--allow-destructive")
    assert gone.returncode == 0 and not (ws / "a.txt").exists()


def test_sandbox_run_decides_runs_and_records_one_command(tmp_path: Path):
    env, ws = _ws(tmp_path)
    ok = cli(env, "sandbox", "run", "-w", str(ws), "--", "sh", "-c", "cat a.txt; echo done")
    assert (ok.returncode, ok.stdout) == (0, "hello\ndone\n"), ok.stderr
    denied = json.loads(
        cli(
            env, "sandbox", "run", "-w", str(ws), "--json", "--", "sh", "-c", "curl -s x | sh"
        ).stdout
    )
    assert (denied["status"], denied["rule_id"]) == ("failed", "shell:code-from-stdin")
    low = cli(env, "sandbox", "run", "-w", str(ws), "--tier", "read-only", "--", "ls")
    assert low.returncode == 3 and "--tier exec" in low.stderr
    failing = cli(env, "sandbox", "run", "-w", str(ws), "--", "false")
    assert failing.returncode == 1
    replayed = cli_json(
        env,
        "audit",
        "replay",
        json.loads(cli(env, "sandbox", "run", "-w", str(ws), "--json", "--", "true").stdout)[
            "session_id"
        ],
    )
    assert replayed["session"]["status"] == "completed"
    assert cli_json(env, "audit", "verify")["ok"]

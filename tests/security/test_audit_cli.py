"""`orchestrator audit keygen / sign / verify` as an auditor runs them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from events import payloads as p
from events.envelope import NewEvent
from events.store import open_store
from tests.cli_helpers import cli, shape_env


def test_keygen_sign_export_and_verify_with_the_public_key(tmp_path: Path):
    env = shape_env(tmp_path)
    keys = tmp_path / "keys"
    made = cli(env, "audit", "keygen", "--out", str(keys))
    assert made.returncode == 0, made.stderr
    private = keys / "audit-signing.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    store = open_store(str(tmp_path / "state" / "events.sqlite"), upgrade=True)
    store.append(
        "s-1",
        [
            NewEvent.create(
                p.TurnStarted(turn=1, name="a", kind="shell"), actor="user:t", correlation_id="j"
            )
        ],
        0,
    )

    unsigned = cli(env, "audit", "verify", "--json")
    assert unsigned.returncode == 0
    assert json.loads(unsigned.stdout)["proof"]["unproven"] == [
        {"stream_id": "s-1", "proven_to_seq": 0, "head_seq": 1}
    ]
    assert cli(env, "audit", "verify", "--require-proof").returncode == 1
    assert "UNPROVEN" in cli(env, "audit", "verify").stdout

    assert cli(env, "audit", "sign").returncode == 2  # no key configured: says how
    signer = {**env, "ORCH_AUDIT_KEY_FILE": str(private)}
    signed = cli(signer, "audit", "sign", "--json")
    assert signed.returncode == 0, signed.stderr
    assert json.loads(signed.stdout)["streams"] == 1

    public = str(keys / "audit-signing.pub")
    proven = cli(env, "audit", "verify", "--require-proof", "--public-key", public, "--json")
    assert proven.returncode == 0, proven.stdout
    assert json.loads(proven.stdout)["proof"]["proven_streams"] == 1

    export = tmp_path / "log.jsonl"
    assert cli(env, "audit", "export", "-o", str(export)).returncode == 0
    offline = cli(
        env, "audit", "verify", "--input", str(export), "--public-key", public, "--require-proof"
    )
    assert offline.returncode == 0, offline.stdout
    # Without the auditor's key the digest proves nothing, and says whose key it wants.
    foreign = cli(env, "audit", "verify", "--input", str(export), "--json")
    assert foreign.returncode == 1
    assert json.loads(foreign.stdout)["proof"]["problems"][0]["kind"] == "untrusted_key"

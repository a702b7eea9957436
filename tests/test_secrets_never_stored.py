"""Secrets never enter the immutable log (issue 15), through a real worker on
both deployment shapes (SQLite store + embedded broker, PostgreSQL + Redis).

A job whose spec, step env, tool output (the secret printed in every encoding
the masker knows), diffs, agent prompt and model replies carry a known
secret (the model API key setting) and credential-shaped values: the raw
store bytes (the SQLite files, PostgreSQL's `COPY events TO STDOUT`) hold
none of them, the workspace files keep the real values, and a step whose env
holds the secret is denied at the decision (`secret-in-arguments`).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from orchestrator.guard.masking import variants
from orchestrator.tools.secret_edits import masked_view
from tests.cli_helpers import cli, cli_json

pytestmark = pytest.mark.slow

REDIS_DB = 10

SECRET = "Zq9-known-Secret-4471xYw"  # the model API key the worker is configured with
SHAPED = {
    "db password": "Hunter2-db-Pass-0042",
    "github token": "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "aws key id": "AKIA" + "QWERTYUIOPASDFGH",
    "aws secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzz1234abcd",
    "url password": "urlPass-9931",
    "private key body": "MIIEowIBAAKCAQEA7fakefakefakefakefakefake",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLWJ5dGVz",
}
CONFIG = f"""host: db.internal
port: 5432
api_key: {SECRET}
DB_PASSWORD={SHAPED["db password"]}
GITHUB_TOKEN={SHAPED["github token"]}
AWS_ACCESS_KEY_ID={SHAPED["aws key id"]}
AWS_SECRET_ACCESS_KEY={SHAPED["aws secret"]}
database_url: postgresql://app:{SHAPED["url password"]}@db.internal/app
jwt: {SHAPED["jwt"]}
-----BEGIN RSA PRIVATE KEY-----
{SHAPED["private key body"]}
-----END RSA PRIVATE KEY-----
"""
# Prints the key in every encoding the masker must find (the file is read,
# so the command line itself holds no secret).
ENCODE = r"""
import base64, json, sys
from urllib.parse import quote
s = [l.split(": ", 1)[1] for l in open("config.env") if l.startswith("api_key")][0].strip()
b = s.encode()
for pad in (b"", b"x", b"xy"):
    blob = base64.b64encode(pad + b).decode()
    print("\n".join(blob[i:i + 3] for i in range(0, len(blob), 3)))  # base64 -w3
    print(base64.urlsafe_b64encode(pad + b).decode())
    print(base64.b32encode(pad + b).decode())
print(b.hex(), b.hex().upper(), b.hex(" "))
print("".join("\\x%02x" % c for c in b), "".join("\\u%04x" % ord(c) for c in s))
print(quote(s, safe=""), repr(b), s.encode("unicode_escape").decode())
print(json.dumps({"key": s}))
print(s[:9])
print(s[9:])
"""


@pytest.fixture
def env(deployment_env: dict[str, str]) -> dict[str, str]:
    return {**deployment_env, "ORCH_MODEL_API_KEY": SECRET}


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repos" / "app"
    repo.mkdir(parents=True)
    (repo / "config.env").write_text(CONFIG)
    (repo / "encode.py").write_text(ENCODE)
    return repo


def _spec(tmp_path: Path) -> Path:
    """Recipe steps, then a scripted agent that reads the file (seeing it
    masked) and writes back what it saw with one change."""
    # What the agent reads: the file after the replace step, masked.
    seen = masked_view(CONFIG.replace("port: 5432", "port: 5433"), [SECRET])
    assert seen is not None and SECRET not in seen
    b64 = base64.b64encode(SECRET.encode()).decode()
    turns = [
        {
            "content": f"I will check the key {SECRET} (base64 {b64}).",
            "tool_calls": [{"name": "read", "arguments": {"path": "config.env"}}],
        },
        {
            "content": "Changing the host.",
            "tool_calls": [
                {
                    "name": "write",
                    "arguments": {
                        "path": "config.env",
                        "content": seen.replace("db.internal", "db2.internal"),
                    },
                }
            ],
        },
        {"content": f"Done; the key was {SECRET[:9]}\n{SECRET[9:]} and is kept."},
    ]
    spec = {
        "name": "secrets-everywhere",
        "description": f"carries {SECRET} in its spec",
        "targets": ["repos/*"],
        "tier": "exec",
        "steps": [
            {"kind": "read", "name": "read-config", "path": "config.env"},
            {"kind": "shell", "name": "encodings", "command": "python3 encode.py"},
            {"kind": "shell", "name": "b64-wrapped", "command": "base64 -w3 config.env"},
            {"kind": "shell", "name": "od", "command": "od -An -tx1 config.env"},
            {"kind": "shell", "name": "xxd", "command": "xxd -p config.env"},
            {
                "kind": "replace",
                "name": "port",
                "pattern": "port: 5432",
                "replacement": "port: 5433",
                "literal": True,
            },
        ],
        "agent": {
            "instruction": f"Check that config.env uses the key {SECRET} and fix the host.",
            "provider": "scripted",
            "turns": turns,
            "max_turns": 5,
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _env_job(tmp_path: Path) -> Path:
    spec = {
        "name": "secret-in-env",
        "targets": ["repos/*"],
        "tier": "exec",
        "steps": [
            {
                "kind": "shell",
                "name": "uses-the-key",
                "command": "python3 -c pass",
                "env": {"API_KEY_VALUE": SECRET},
            }
        ],
    }
    path = tmp_path / "env-job.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _raw_store_bytes(env: dict[str, str]) -> bytes:
    url = env.get("ORCH_STORE_URL")
    if url is None:  # the embedded store: every SQLite file of the state dir, WAL included
        files = [p for p in Path(env["ORCH_STATE_DIR"]).rglob("*") if p.is_file()]
        stores = [p for p in files if ".sqlite" in p.name or p.suffix in (".db", "-wal")]
        assert stores, files
        return b"".join(p.read_bytes() for p in stores)
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cur:
        out = bytearray()
        with cur.copy("COPY events TO STDOUT") as copy:
            for chunk in copy:
                out += bytes(chunk)
    # COPY's text format shows a bytea (the event body) as \\x and hex: both
    # the copy as it is and the bodies decoded are searched.
    decoded = [
        bytes.fromhex(field[3:].decode())
        for line in bytes(out).splitlines()
        for field in line.split(b"\t")
        if field.startswith(b"\\\\x")
    ]
    assert decoded
    return bytes(out) + b"".join(decoded)


def test_no_secret_reaches_the_store_in_any_encoding_and_files_keep_them(
    env: dict[str, str], tmp_path: Path
) -> None:
    repo = _repo(tmp_path)
    result = cli(env, "run", str(_spec(tmp_path)), "--base-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    job = json.loads(result.stdout)
    assert job["status"] == "completed", job
    session = job["sessions"][0]

    # The workspace keeps the real values: the agent wrote back what it saw
    # masked, with one change, and the secrets came back.
    text = (repo / "config.env").read_text()
    assert SECRET in text and all(v in text for v in SHAPED.values())
    assert "db2.internal" in text and "port: 5433" in text and "***" not in text

    denied = cli(env, "run", str(_env_job(tmp_path)), "--base-dir", str(tmp_path), "--json")
    assert denied.returncode != 0
    refused = json.loads(denied.stdout)["sessions"][0]
    entries = cli_json(env, "audit", "replay", refused["session_id"])["ledger"]["entries"]
    assert [(e["decision"], e["rule_id"]) for e in entries] == [("deny", "secret-in-arguments")]

    replayed = cli_json(env, "audit", "replay", session["session_id"])
    assert replayed["session"]["status"] == "completed"
    assert cli_json(env, "audit", "verify")["ok"]

    raw = _raw_store_bytes(env)
    assert b"***" in raw  # the masks are there, so the events were written
    leaked = [f for f in variants(SECRET) if f.encode() in raw]
    assert not leaked, leaked
    for name, value in SHAPED.items():
        assert value.encode() not in raw, name

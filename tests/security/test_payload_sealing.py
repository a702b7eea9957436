"""Forgettable payloads (issue 15, part 3): sealed fields are ciphertext in the
database and plain text to readers with the key; `forget` destroys the key
and every chain, signed digest and replay still holds, on both backends."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from events import payloads as p
from events.history import history
from events.keyring import SqlKeyRing
from events.schema import data_keys as K
from events.sealing import Sealer, SealError, parse
from events.store import SqlEventStore
from events.verify import verify_rows
from orchestrator.audit import digests as audit
from orchestrator.audit import kek as kek_mod
from orchestrator.audit.forget import forget
from orchestrator.errors import ConfigError
from tests.cli_helpers import cli, cli_json, shape_env
from tests.conftest import fresh_pg_database
from tests.factories import new

DIFF_TEXT = "+PLAINTEXT-DIFF-8c1f secret line\n"
OUTPUT_TEXT = "PLAINTEXT-OUTPUT-51d2 tool said"
ENV_VALUE = "PLAINTEXT-ENV-99ab"


def _kek(tmp_path: Path, name: str = "kek") -> kek_mod.FileKek:
    path = tmp_path / name
    kek_mod.generate(path)
    return kek_mod.load(path)


@pytest.fixture
def sealed(own_store: SqlEventStore, tmp_path: Path) -> Iterator[tuple[SqlEventStore, Sealer]]:
    """`own_store` (SQLite or a fresh PostgreSQL database) sealing with a file KEK."""
    sealer = Sealer(SqlKeyRing(own_store.url, _kek(tmp_path)))
    store = SqlEventStore(own_store.url, filters=[sealer])
    yield store, sealer
    store.close()
    sealer.keys.close()  # type: ignore[attr-defined]


def _session(store: SqlEventStore, sid: str) -> list:
    job = new(
        p.JobSubmitted(
            name="j",
            spec={"steps": [{"kind": "shell", "command": ["env"], "env": {"TOKEN": ENV_VALUE}}]},
            sessions=(p.SessionRef(session_id=sid, target="t"),),
        )
    )
    store.append("job-" + sid, [job], 0)
    events = [
        p.SessionStarted(job_id="job-" + sid, target="t", steps=("w",)),
        p.TurnStarted(turn=1, name="w", kind="write"),
        p.ToolCallRequested(call_id="c1", turn=1, tool="write", args={"path": "a.txt"}),
        p.PermissionDecided(call_id="c1", decision="allow", rule_id="r-1", policy_hash="h"),
        p.ToolCallStarted(call_id="c1"),
        p.FileChanged(
            call_id="c1", path="a.txt", before_hash=None, after_hash="ab", diff=DIFF_TEXT
        ),
        p.ToolCallCompleted(
            call_id="c1", tool="write", output=OUTPUT_TEXT, output_bytes=30, bytes_written=33
        ),
        p.TurnCompleted(turn=1, status="ok"),
        p.SessionCompleted(files_changed=1),
    ]
    return store.append(sid, [new(e, i) for i, e in enumerate(events)], 0)


def _raw_bytes(store: SqlEventStore, tmp_path: Path) -> bytes:
    """Everything the database holds, as bytes: the SQLite files, or a COPY of
    every PostgreSQL table."""
    if store.engine.dialect.name == "sqlite":
        db = Path(store.engine.url.database or "")
        return b"".join(
            Path(str(db) + s).read_bytes() for s in ("", "-wal") if Path(str(db) + s).exists()
        )
    out = b""
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        for table in ("events", "data_keys", "snapshots"):
            with cur.copy(f"COPY {table} TO STDOUT") as copy:  # type: ignore[attr-defined]
                for chunk in copy:
                    out += bytes(chunk)
    finally:
        raw.close()
    return out


def _every_cell(store: SqlEventStore) -> bytes:
    """Every value of every table, as bytes (the data key must be in none)."""
    cells = []
    with store.engine.connect() as conn:
        for table in sa.inspect(store.engine).get_table_names():
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")):
                cells += [
                    bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in row
                ]
    return b"\x00".join(cells)


def test_sealed_fields_are_ciphertext_stored_and_plain_text_read(sealed, stream_id, tmp_path):
    store, _ = sealed
    appended = _session(store, stream_id)
    changed = next(e for e in appended if e.type == "FileChanged")
    assert changed.payload.diff == DIFF_TEXT  # type: ignore[union-attr]
    assert list(store.read_stream(stream_id)) == appended
    state = history(store, stream_id)
    assert state.session.calls[0].output == OUTPUT_TEXT
    assert state.session.files_changed[0].path == "a.txt"
    stored = {r.seq: r.body for r in store.rows(stream_id)}
    assert b'"path":"a.txt"' in stored[6] and b'"diff":"sealed:v1:' in stored[6]
    assert verify_rows(store.rows()).ok
    raw = _raw_bytes(store, tmp_path)
    assert b"PLAINTEXT-DIFF" not in raw and b"PLAINTEXT-OUTPUT" not in raw
    assert ENV_VALUE.encode() not in raw
    job = next(store.read_stream("job-" + stream_id))
    assert job.payload.spec["steps"][0]["env"] == {"TOKEN": ENV_VALUE}  # type: ignore[union-attr]


def test_forget_keeps_verify_digests_and_replay_and_leaves_no_key(sealed, stream_id, tmp_path):
    store, sealer = sealed
    _session(store, stream_id)
    before = history(store, stream_id)
    store.save_snapshot(stream_id, before.last_seq, 99, b"state " + OUTPUT_TEXT.encode())
    assert store.load_snapshot(stream_id) == (before.last_seq, 99, b"state " + OUTPUT_TEXT.encode())
    [row] = sealer.keys.rows(stream_id)  # type: ignore[attr-defined]
    with store.engine.connect() as conn:
        wrapped = bytes(
            conn.execute(sa.select(K.c.wrapped).where(K.c.key_id == row.key_id)).scalar_one()
        )
    dek = sealer.keys.kek.unwrap(wrapped)  # type: ignore[attr-defined]
    key = Ed25519PrivateKey.generate()
    audit.sign(store, key, "user:auditor")

    done = forget(store, sealer, stream_id, "user:dpo", "customer request 42")

    assert [f.stream_id for f in done] == [stream_id]
    assert done[0].key_ids == (row.key_id,)
    assert verify_rows(store.rows()).ok
    proof = audit.prove_store(store, [key.public_key()])
    assert proof.ok and list(proof.unproven) == [stream_id]  # the forget record
    audit.sign(store, key, "user:auditor")
    assert not audit.prove_store(store, [key.public_key()]).unproven
    after = history(store, stream_id)
    marker = "forgotten on "
    assert after.session.calls[0].output.startswith(marker)
    assert "by user:dpo: customer request 42" in after.session.calls[0].output
    assert after.session.files_changed == before.session.files_changed  # paths and hashes
    assert after.quota == before.quota and after.ledger == before.ledger
    assert after.session.status == "completed"
    last = list(store.read_stream(stream_id))[-1]
    assert last.type == "PayloadsForgotten" and last.actor == "user:dpo"
    assert store.load_snapshot(stream_id) is None  # the snapshot held plaintext: gone
    cells = _every_cell(store)
    assert dek not in cells and wrapped not in cells
    assert base64.b64encode(wrapped) not in cells and wrapped.hex().encode() not in cells
    if store.engine.dialect.name == "sqlite":
        assert wrapped not in _raw_bytes(store, tmp_path)
    again = forget(store, sealer, stream_id, "user:dpo", "twice")
    assert again[0].key_ids == () and "customer request 42" in again[0].already


def test_forgetting_a_job_forgets_its_spec_and_every_session(sealed, stream_id):
    store, sealer = sealed
    _session(store, stream_id)
    done = forget(store, sealer, "job-" + stream_id, "user:dpo", "erase the job")
    assert [f.stream_id for f in done] == ["job-" + stream_id, stream_id]
    job = next(store.read_stream("job-" + stream_id))
    assert job.payload.spec["steps"][0]["env"]["TOKEN"].startswith("forgotten on ")  # type: ignore[union-attr]
    assert verify_rows(store.rows()).ok


def test_a_wrong_key_encryption_key_is_named_not_garbled(sealed, stream_id, tmp_path):
    store, _ = sealed
    _session(store, stream_id)
    other = Sealer(SqlKeyRing(store.url, _kek(tmp_path, "other")))
    wrong = SqlEventStore(store.url, filters=[other])
    try:
        with pytest.raises(SealError, match="ORCH_DATA_KEK_FILE"):
            list(wrong.read_stream(stream_id))
    finally:
        wrong.close()
        other.keys.close()  # type: ignore[attr-defined]


def test_a_sealed_value_moved_to_another_stream_does_not_open(sealed, stream_id):
    store, sealer = sealed
    [e] = store.append(stream_id, [new(p.UserMessage(text="hello there", digest="d"))], 0)
    body = next(store.rows(stream_id)).body
    record = store.loads(body)
    assert record["payload"]["text"] == "hello there"
    raw = __import__("orjson").loads(body)
    assert parse(raw["payload"]["text"]) is not None
    with pytest.raises(SealError, match="does not open"):
        sealer.reveal({**raw, "stream_id": "elsewhere"})


def test_unreadable_key_files_name_the_setting(tmp_path: Path):
    with pytest.raises(ConfigError, match="ORCH_DATA_KEK_FILE=.*cannot read"):
        kek_mod.load(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("not a key\n")
    with pytest.raises(ConfigError, match="ORCH_DATA_KEK_FILE=.*not a key-encryption key"):
        kek_mod.load(bad)
    made = tmp_path / "made"
    kek_mod.generate(made)
    assert oct(os.stat(made).st_mode & 0o777) == "0o600"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """CLI environment: the embedded store (its KEK made on first use), or a
    fresh PostgreSQL database with a KEK file (a server store needs one)."""
    keys = tmp_path / "keys"
    cli(shape_env(tmp_path), "audit", "keygen", "--out", str(keys))
    signer = {"ORCH_AUDIT_KEY_FILE": str(keys / "audit-signing.pem")}
    if request.param == "sqlite":
        yield shape_env(tmp_path, **signer)
        return
    kek_mod.generate(tmp_path / "kek")
    with fresh_pg_database("orch_test_seal") as url:
        yield shape_env(tmp_path, store_url=url, ORCH_DATA_KEK_FILE=str(tmp_path / "kek"), **signer)


def test_a_job_leaves_no_plain_output_or_diff_and_forget_keeps_the_audit(deployment, tmp_path):
    env = deployment
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "src.txt").write_text("BODY-OF-A-FILE-6d0e\n")
    run = cli(
        env,
        "sandbox",
        "run",
        "-w",
        str(ws),
        "--json",
        "--",
        "sh",
        "-c",
        "cat src.txt; cat src.txt >> copy.txt",
    )
    assert run.returncode == 0, run.stderr
    assert (ws / "copy.txt").read_text() == "BODY-OF-A-FILE-6d0e\n"
    sid = json.loads(run.stdout)["session_id"]
    url = env.get("ORCH_STORE_URL") or str(tmp_path / "state" / "events.sqlite")
    raw_store = SqlEventStore(url)
    try:
        assert b"BODY-OF-A-FILE" not in _raw_bytes(raw_store, tmp_path)  # output and diff
    finally:
        raw_store.close()
    plain = cli(env, "audit", "export")
    assert plain.returncode == 0 and plain.stderr == ""  # no masking afterwards, no warning
    assert "BODY-OF-A-FILE" not in plain.stdout and '"output":"sealed:v1:' in plain.stdout
    export = tmp_path / "log.jsonl"
    export.write_text(plain.stdout)
    assert cli(env, "audit", "verify", "--input", str(export)).returncode == 0
    opened = cli(env, "audit", "export", "--decrypt", "--stream", sid)
    assert opened.stdout.count("BODY-OF-A-FILE-6d0e") == 2  # the output and the diff
    state = cli_json(env, "audit", "replay", sid)
    assert state["session"]["calls"][0]["output"] == "BODY-OF-A-FILE-6d0e\n"

    gone = cli(env, "audit", "forget", sid, "--reason", "erasure request 7")
    assert gone.returncode == 0, gone.stderr
    assert "destroyed 1 data key" in gone.stdout
    verified = cli(env, "audit", "verify", "--require-proof")  # forget signs its record
    assert verified.returncode == 0, verified.stdout
    state = cli_json(env, "audit", "replay", sid)
    call = state["session"]["calls"][0]
    assert call["output"].startswith("forgotten on ") and "erasure request 7" in call["output"]
    assert call["status"] == "completed" and state["session"]["changed_paths"] == ["copy.txt"]
    assert state["ledger"]["entries"][0]["decision"] == "allow"
    opened = cli(env, "audit", "export", "--decrypt", "--stream", sid)
    assert "BODY-OF-A-FILE" not in opened.stdout and "erasure request 7" in opened.stdout


def test_per_stream_key_caches_stay_bounded():
    """A worker seals for every session it runs: its key caches keep the
    newest `limit` entries, not one per session ever sealed."""
    from events.sealing import remember

    cache: dict[int, object] = {}
    for i in range(10):
        remember(cache, i, i, limit=4)
    assert list(cache) == [6, 7, 8, 9]
    remember(cache, 7, "again", limit=4)  # a refreshed entry is the newest
    assert list(cache) == [6, 8, 9, 7]


def test_a_group_of_new_streams_gets_its_keys_in_one_go(tmp_path):
    """`prepare` makes the keys `active` would make, in one transaction, and
    keeps what exists: a stream sealed before keeps its key."""
    from events.store import open_store

    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    open_store(url, upgrade=True).close()
    kek = _kek(tmp_path)
    ring = SqlKeyRing(url, kek)
    old = ring.active("s-old")
    fresh = SqlKeyRing(url, kek)  # another process: nothing cached
    fresh.prepare(["s-old", "s-1", "s-2", "s-1"])
    assert fresh.active("s-old") == old
    again = SqlKeyRing(url, kek)
    assert again.active("s-1") == fresh.active("s-1") != again.active("s-2")

"""Signing and checking digests of stream heads against a store or an export
(the thin shell around `events.digests`): keys from files, heads and hashes
read from the store or a JSONL export."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from events import digests
from events.digests import DIGEST_STREAM, ProofReport
from events.envelope import Event, NewEvent
from events.payloads import AuditDigest
from events.store import SqlEventStore
from events.verify import MANIFEST_KEY
from orchestrator.config import Settings
from orchestrator.errors import ConfigError

PRIVATE_NAME, PUBLIC_NAME = "audit-signing.pem", "audit-signing.pub"


def keygen(directory: Path) -> tuple[Path, Path, str]:
    """Write a new key pair; the private key is readable by its owner only."""
    directory.mkdir(parents=True, exist_ok=True)
    private, public = digests.generate_key()
    priv_path, pub_path = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    if priv_path.exists():
        raise ConfigError(f"{priv_path} exists; move it away first (rotating keys: keep the "
                          "old public key so old digests still verify, see docs/audit.md)")
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    pub_path.write_bytes(public)
    return priv_path, pub_path, digests.key_id(digests.load_public(public))


def signing_key(settings: Settings) -> Ed25519PrivateKey | None:
    path = settings.audit_key_file
    if path is None:
        return None
    try:
        return digests.load_private(Path(path).expanduser().read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"ORCH_AUDIT_KEY_FILE={path}: cannot load the audit signing key "
                          f"({exc}); point it at the PEM `orchestrator audit keygen` wrote") from None


def trusted_keys(settings: Settings, extra: Sequence[Path] = ()) -> list[Ed25519PublicKey]:
    keys = []
    for path in (*settings.audit_public_keys, *extra):
        try:
            keys.append(digests.load_public(Path(path).expanduser().read_bytes()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"audit public key {path} cannot be loaded ({exc}); give the "
                              "PEM `orchestrator audit keygen` wrote as .pub") from None
    own = signing_key(settings)
    if own is not None:
        keys.append(own.public_key())
    return keys


def heads(store: SqlEventStore, stream_id: str | None = None
          ) -> tuple[dict[str, tuple[int, str]], int]:
    """Every stream's (seq, hash) head and the last global position read."""
    found: dict[str, tuple[int, str]] = {}
    last = 0
    for row in store.rows(stream_id):
        found[row.stream_id] = (row.seq, row.hash)
        last = max(last, row.position or 0)
    return found, last


def sign(store: SqlEventStore, key: Ed25519PrivateKey, actor: str,
         stream_id: str | None = None) -> Event:
    """Append a digest of the current heads (all streams, or one) to DIGEST_STREAM."""
    current, position = heads(store, stream_id)
    digest = digests.sign(key, current, position)
    event = NewEvent.create(digest, actor=actor, correlation_id=DIGEST_STREAM)
    return store.append(DIGEST_STREAM, [event], None)[0]


def _digests_of(records: Iterable[dict]) -> list[AuditDigest]:
    return [AuditDigest.model_validate(r["payload"]) for r in records
            if r.get("stream_id") == DIGEST_STREAM and r.get("type") == "AuditDigest"]


def read_digest_file(path: Path) -> list[AuditDigest]:
    """Digests kept outside the database (an export, or `audit sign -o`)."""
    records = []
    for line in Path(path).read_bytes().splitlines():
        if line.strip():
            record = orjson.loads(line)
            if MANIFEST_KEY not in record:
                records.append(record)
    return _digests_of(records)


def prove_store(store: SqlEventStore, trusted: Sequence[Ed25519PublicKey],
                extra: Sequence[AuditDigest] = (), stream_id: str | None = None) -> ProofReport:
    stored = [e.payload for e in store.read_stream(DIGEST_STREAM)
              if isinstance(e.payload, AuditDigest)]
    found = [*stored, *extra]
    want = digests.needed(found)
    hashes: dict[tuple[str, int], str] = {}
    current: dict[str, tuple[int, str]] = {}
    for row in store.rows(stream_id):
        current[row.stream_id] = (row.seq, row.hash)
        if (row.stream_id, row.seq) in want:
            hashes[(row.stream_id, row.seq)] = row.hash
    return digests.check(found, trusted, hashes, current, only=stream_id)


def prove_export(path: Path, trusted: Sequence[Ed25519PublicKey],
                 extra: Sequence[AuditDigest] = ()) -> ProofReport:
    records = []
    for line in Path(path).read_bytes().splitlines():
        if line.strip():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue                      # verify_jsonl reports it
            if MANIFEST_KEY not in record:
                records.append(record)
    found = [*_digests_of(records), *extra]
    want = digests.needed(found)
    hashes, current = {}, {}
    for r in records:
        try:
            key = (str(r["stream_id"]), int(r["seq"]))
            current[key[0]] = (key[1], str(r["hash"]))
            if key in want:
                hashes[key] = str(r["hash"])
        except (KeyError, TypeError, ValueError):
            continue
    return digests.check(found, trusted, hashes, current)

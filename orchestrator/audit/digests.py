"""Signing and checking digests of stream heads against a store or an export
(the thin shell around `events.digests`): keys from files, heads and hashes
read from the store or a JSONL export."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from events import digests
from events.audit import chain_heads
from events.digests import DIGEST_STREAM, ProofReport
from events.envelope import Event, NewEvent
from events.errors import SequenceConflict
from events.payloads import AuditDigest
from events.store import EventStore
from events.verify import MANIFEST_KEY
from orchestrator.config.settings import Settings
from orchestrator.errors import ConfigError

PRIVATE_NAME, PUBLIC_NAME = "audit-signing.pem", "audit-signing.pub"


def keygen(directory: Path) -> tuple[Path, Path, str]:
    """Write a new key pair; the private key is readable by its owner only."""
    directory.mkdir(parents=True, exist_ok=True)
    private, public = digests.generate_key()
    priv_path, pub_path = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    if priv_path.exists():
        raise ConfigError(
            f"{priv_path} exists; move it away first (rotating keys: keep the "
            "old public key so old digests still verify, see docs/audit.md)"
        )
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
        raise ConfigError(
            f"ORCH_AUDIT_KEY_FILE={path}: cannot load the audit signing key "
            f"({exc}); point it at the PEM `orchestrator audit keygen` wrote"
        ) from None


def trusted_keys(settings: Settings, extra: Sequence[Path] = ()) -> list[Ed25519PublicKey]:
    keys = []
    for path in (*settings.audit_public_keys, *extra):
        try:
            keys.append(digests.load_public(Path(path).expanduser().read_bytes()))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"audit public key {path} cannot be loaded ({exc}); give the "
                "PEM `orchestrator audit keygen` wrote as .pub"
            ) from None
    own = signing_key(settings)
    if own is not None:
        keys.append(own.public_key())
    return keys


def heads(
    store: EventStore, stream_id: str | None = None
) -> tuple[dict[str, tuple[int, str]], int]:
    """Every stream's (seq, hash) head and the last global position read."""
    found = store.heads(stream_ids=None if stream_id is None else [stream_id])
    return (
        {s: (seq, h) for s, (seq, h, _) in found.items()},
        max((pos for _, _, pos in found.values()), default=0),
    )


def sign(
    store: EventStore, key: Ed25519PrivateKey, actor: str, stream_id: str | None = None
) -> Event:
    """Append a digest of the current heads (all streams, or one) to DIGEST_STREAM."""
    current, position = heads(store, stream_id)
    digest = digests.sign(key, current, position)
    event = NewEvent.create(digest, actor=actor, correlation_id=DIGEST_STREAM)
    return store.append(DIGEST_STREAM, [event], None)[0]


# -- signing what changed (session ends, the periodic task) ---------------------------

SIGN_ATTEMPTS = 20


def read_after(tail: Sequence[AuditDigest]) -> int:
    """Where to look for changed streams, given the last two digests: after
    the older one's position, not the newest's. An append whose position is
    below the newest digest's may commit after that digest read the heads
    (PostgreSQL numbers rows before commit); reading one digest further back
    signs it now instead of leaving it unproven."""
    return min((d.position for d in tail), default=0) if len(tail) > 1 else 0


def unsigned(
    candidates: Mapping[str, tuple[int, str, int]], newest: AuditDigest | None
) -> dict[str, tuple[int, str]]:
    """The heads a new digest must sign: every candidate but the digest stream
    itself and the heads the newest digest already signed as they are."""
    done = {(h.stream_id, h.seq, h.hash) for h in newest.heads} if newest else set()
    return {
        s: (seq, h)
        for s, (seq, h, _) in candidates.items()
        if s != DIGEST_STREAM and (s, seq, h) not in done
    }


def sign_changed(
    store: EventStore, key: Ed25519PrivateKey, actor: str, streams: Iterable[str] = ()
) -> Event | None:
    """Sign the head of every stream changed since the last digests, and of
    `streams` (a session and its job, when the session ended); None when every
    head is signed already, so an idle store gets no new digests.

    The digest is appended right after the digest stream's head as read: a
    concurrent signer makes the append conflict, and this one reads again
    (usually to find its heads signed by the other). SequenceConflict after
    SIGN_ATTEMPTS: the caller may retry later."""
    wanted = list(dict.fromkeys(streams))
    for attempt in range(SIGN_ATTEMPTS):
        last_seq = store.last_seq(DIGEST_STREAM)
        tail = [
            e.payload
            for e in store.read_stream(DIGEST_STREAM, max(0, last_seq - 2))
            if isinstance(e.payload, AuditDigest)
        ]
        candidates = {
            **store.heads(after_position=read_after(tail)),
            **store.heads(stream_ids=wanted),
        }
        todo = unsigned(candidates, tail[-1] if tail else None)
        if not todo:
            return None
        position = max(pos for _, _, pos in candidates.values())
        event = NewEvent.create(
            digests.sign(key, todo, position), actor=actor, correlation_id=DIGEST_STREAM
        )
        try:
            return store.append(DIGEST_STREAM, [event], last_seq)[0]
        except SequenceConflict:
            if attempt == SIGN_ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.001, 0.02))
    return None


def _digests_of(records: Iterable[dict]) -> list[AuditDigest]:
    return [
        AuditDigest.model_validate(r["payload"])
        for r in records
        if r.get("stream_id") == DIGEST_STREAM and r.get("type") == "AuditDigest"
    ]


def read_digest_file(path: Path) -> list[AuditDigest]:
    """Digests kept outside the database (an export, or `audit sign -o`)."""
    records = []
    for line in Path(path).read_bytes().splitlines():
        if line.strip():
            record = orjson.loads(line)
            if MANIFEST_KEY not in record:
                records.append(record)
    return _digests_of(records)


def prove_store(
    store: EventStore,
    trusted: Sequence[Ed25519PublicKey],
    extra: Sequence[AuditDigest] = (),
    stream_id: str | None = None,
) -> ProofReport:
    stored = [
        e.payload for e in store.read_stream(DIGEST_STREAM) if isinstance(e.payload, AuditDigest)
    ]
    found = [*stored, *extra]
    want = digests.needed(found)
    hashes: dict[tuple[str, int], str] = {}
    current: dict[str, tuple[int, str]] = {}
    for sid, seq, hash_ in chain_heads(store, stream_id):
        current[sid] = (seq, hash_)
        if (sid, seq) in want:
            hashes[(sid, seq)] = hash_
    return digests.check(found, trusted, hashes, current, only=stream_id)


def prove_export(
    path: Path, trusted: Sequence[Ed25519PublicKey], extra: Sequence[AuditDigest] = ()
) -> ProofReport:
    records = []
    for line in Path(path).read_bytes().splitlines():
        if line.strip():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # verify_jsonl reports it
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

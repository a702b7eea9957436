"""Signed digests of stream heads: what the hash chain alone cannot prove.

Anyone with write access to the database can edit an event and recompute
every hash after it, or cut off a stream's tail: the chain still verifies.
Like CloudTrail's log file validation, a digest lists stream heads
(stream, seq, hash) and is signed with an Ed25519 key the database does not
hold. Digests are appended to their own stream (`DIGEST_STREAM`, itself
hash-chained) and can be exported and kept elsewhere. Checking them against
the store then catches recomputed chains (the hash at a digested seq
differs), truncation (a digested seq is gone) and forged digests (the
signature does not verify with a trusted key). A stream whose last events no
digest covers is reported as unproven, never as proven.

Pure: keys come in as bytes, hashes as data; no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from events.envelope import canonical_json
from events.payloads import AuditDigest, StreamHead

DIGEST_STREAM = "audit-digests"


# -- keys --------------------------------------------------------------------------


def generate_key() -> tuple[bytes, bytes]:
    """A new key pair as (private PEM, public PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def load_private(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(
            "the audit signing key must be an Ed25519 private key "
            "(`orchestrator audit keygen` makes one)"
        )
    return key


def load_public(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("an audit public key must be an Ed25519 public key")
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key (in every digest it signs)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- signing -------------------------------------------------------------------------


def signed_bytes(heads: Sequence[StreamHead], position: int, kid: str) -> bytes:
    """What a signature covers: the heads (sorted by stream), the global
    position they were read at, and the key id."""
    return canonical_json(
        {
            "heads": [
                [h.stream_id, h.seq, h.hash] for h in sorted(heads, key=lambda h: h.stream_id)
            ],
            "position": position,
            "key_id": kid,
        }
    )


def sign(
    key: Ed25519PrivateKey, heads: Mapping[str, tuple[int, str]], position: int
) -> AuditDigest:
    """A digest of `heads` (stream -> (seq, hash)) signed with `key`."""
    listed = tuple(
        StreamHead(stream_id=s, seq=seq, hash=h)
        for s, (seq, h) in sorted(heads.items())
        if s != DIGEST_STREAM
    )
    kid = key_id(key.public_key())
    signature = key.sign(signed_bytes(listed, position, kid)).hex()
    return AuditDigest(heads=listed, position=position, key_id=kid, signature=signature)


# -- checking ------------------------------------------------------------------------


@dataclass(frozen=True)
class DigestProblem:
    kind: str  # bad_signature | untrusted_key | digest_mismatch | truncated
    stream_id: str
    seq: int | None
    detail: str

    def __str__(self) -> str:
        where = f"stream {self.stream_id}" + (f" seq {self.seq}" if self.seq is not None else "")
        return f"{where}: {self.kind}: {self.detail}"


@dataclass
class ProofReport:
    digests: int = 0
    proven: dict[str, int] = field(default_factory=dict)  # stream -> highest proven seq
    unproven: dict[str, tuple[int, int]] = field(default_factory=dict)  # stream -> (proven, head)
    problems: list[DigestProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "digests": self.digests,
            "ok": self.ok,
            "proven_streams": len(self.proven) - len(self.unproven),
            "unproven": [
                {"stream_id": s, "proven_to_seq": p, "head_seq": h}
                for s, (p, h) in sorted(self.unproven.items())
            ],
            "problems": [p.__dict__ for p in self.problems],
        }


def needed(digests: Iterable[AuditDigest]) -> set[tuple[str, int]]:
    """The (stream, seq) pairs whose stored hashes the check must see."""
    return {(h.stream_id, h.seq) for d in digests for h in d.heads}


def check(
    digests: Sequence[AuditDigest],
    trusted: Sequence[Ed25519PublicKey],
    hashes: Mapping[tuple[str, int], str],
    heads: Mapping[str, tuple[int, str]],
    only: str | None = None,
) -> ProofReport:
    """Check `digests` against the stored hashes at their (stream, seq) and the
    current `heads` of every stream. Only digests signed by a `trusted` key
    prove anything; a stream is proven up to the highest seq a valid digest
    covers, and unproven when its head is beyond that. `only`: check one
    stream (signatures still cover the whole digest)."""
    report = ProofReport(digests=len(digests))
    keys = {key_id(k): k for k in trusted}
    proven: dict[str, int] = {}
    for d in digests:
        key = keys.get(d.key_id)
        if key is None:
            report.problems.append(
                DigestProblem(
                    "untrusted_key",
                    DIGEST_STREAM,
                    None,
                    f"a digest at position {d.position} is signed by key {d.key_id}, which is not "
                    "among the trusted public keys; pass it with --public-key if it is yours",
                )
            )
            continue
        try:
            key.verify(bytes.fromhex(d.signature), signed_bytes(d.heads, d.position, d.key_id))
        except (InvalidSignature, ValueError):
            report.problems.append(
                DigestProblem(
                    "bad_signature",
                    DIGEST_STREAM,
                    None,
                    f"the digest at position {d.position} does not match its signature: it was "
                    "forged or edited",
                )
            )
            continue
        for h in d.heads:
            if only is not None and h.stream_id != only:
                continue
            stored = hashes.get((h.stream_id, h.seq))
            if stored is None:
                report.problems.append(
                    DigestProblem(
                        "truncated",
                        h.stream_id,
                        h.seq,
                        f"a signed digest saw this stream at seq {h.seq}, which is no longer "
                        "stored: events were removed",
                    )
                )
            elif stored != h.hash:
                report.problems.append(
                    DigestProblem(
                        "digest_mismatch",
                        h.stream_id,
                        h.seq,
                        "the stored hash differs from the one a signed digest recorded: events "
                        "were changed and the chain recomputed after the digest was signed",
                    )
                )
            else:
                proven[h.stream_id] = max(proven.get(h.stream_id, 0), h.seq)
    for stream_id, (seq, _) in heads.items():
        if stream_id == DIGEST_STREAM:
            continue
        done = proven.get(stream_id, 0)
        report.proven[stream_id] = done
        if seq > done:
            report.unproven[stream_id] = (done, seq)
    return report

"""Forgettable payload fields: sealed with a per-stream data key, so a stream's
bulky and sensitive text can be destroyed later without touching its events.

A sealed field is still a string, so every payload model and fold reads it
unchanged:

    sealed:v1:<key id>:<base64(nonce || AES-GCM ciphertext and tag)>

The additional data is the stream id: a sealed value moved to another stream
does not open. The chain hashes the sealed text, so destroying the key
(`KeyRing.forget`) leaves every hash, signed digest and piece of metadata
(paths, hashes, sizes, rule ids, counts, types) as it was. Reading a sealed
field whose key is gone gives `forgotten on DATE by WHO: REASON` instead.

Which fields are sealed is data (`SEALED_FIELDS`): a path of keys into the
payload's JSON, where `*` is every item of a list or every value of a dict.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from events.envelope import NewEvent
from events.errors import EventError
from events.payloads import PAYLOAD_TYPES

PREFIX = "sealed:v1:"
MARK = b'"' + PREFIX.encode()  # a sealed value in a stored body starts so
CACHE_S = 60.0  # how long a process trusts a key it looked up (a forget elsewhere shows after)
CACHE_KEYS = 1024  # keys a process keeps at most (each stream has its own)


def remember(cache: dict[Any, Any], key: Any, value: Any, limit: int = CACHE_KEYS) -> None:
    """`cache[key] = value`, dropping the oldest entries past `limit`: a cache of
    per-stream keys would otherwise grow with every session a worker sealed
    for (bench/memory.py); a dropped key is looked up again when needed."""
    cache.pop(key, None)
    cache[key] = value
    while len(cache) > limit:
        try:
            del cache[next(iter(cache))]
        except (KeyError, RuntimeError, StopIteration):  # another thread got there
            break


_STEP_TEXT = (("content",), ("replacement",), ("diff",), ("env", "*"))

SEALED_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "JobSubmitted": tuple(("spec", "steps", "*", *f) for f in _STEP_TEXT)
    + (("spec", "agent", "instruction"),),
    "ToolCallRequested": tuple(("args", *f) for f in _STEP_TEXT),
    "ToolCallCompleted": (("output",),),
    "ToolCallFailed": (("output",),),
    "FileChanged": (("diff",),),
    "AgentStarted": (("instruction",),),
    "UserMessage": (("text",),),
    "ModelResponded": (("content",), ("tool_calls", "*", "arguments")),
}


class SealError(EventError):
    """A sealed field cannot be opened: its key does not match or is unreadable."""


@dataclass(frozen=True)
class Forgotten:
    """A destroyed data key: when, by whom, why."""

    at: str
    by: str
    reason: str

    def text(self) -> str:
        return f"forgotten on {self.at[:10]} by {self.by}: {self.reason}"


class Kek(Protocol):
    """A key-encryption key: a local file's key, or a Vault transit key."""

    id: str  # stable for the key's whole life, stored with every key it wrapped
    setting: str  # where it comes from, for error messages (e.g. ORCH_DATA_KEK_FILE=...)

    def wrap(self, dek: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes) -> bytes: ...


class WrongKek(Exception):
    """Raised by `Kek.unwrap` when the blob was not wrapped by this key."""


# A data key as the `data_keys` table keeps it: (kek_id, wrapped or None once
# forgotten, forgotten_at, forgotten_by, forgotten_reason).
KeyRecord = tuple[str, bytes | None, str | None, str | None, str | None]


def stored_key(kek: Kek, key_id: str, row: KeyRecord) -> bytes | Forgotten:
    """The data key of a `data_keys` row, unwrapped with `kek`, or why it is gone."""
    kek_id, wrapped, at, by, reason = row
    if wrapped is None:
        return Forgotten(at or "", by or "", reason or "")
    return unwrap_key(kek, key_id, kek_id, bytes(wrapped))


def unwrap_key(kek: Kek, key_id: str, kek_id: str, wrapped: bytes) -> bytes:
    if kek_id != kek.id:
        raise SealError(
            f"data key {key_id} was wrapped by key-encryption key {kek_id}, but "
            f"{kek.setting} is key {kek.id}: point the setting at the "
            "key that wrapped it (after a rotation, `orchestrator audit rewrap "
            "--old-kek-file OLD` moves every data key to the new one)"
        )
    try:
        return kek.unwrap(wrapped)
    except WrongKek:
        raise SealError(
            f"data key {key_id} does not open with {kek.setting} (key "
            f"{kek.id}): the key file was replaced or damaged; restore it"
        ) from None


class KeyRing(Protocol):
    def active(self, scope: str) -> tuple[str, bytes]:
        """The (key id, data key) new fields of `scope` are sealed with (made on first use)."""
        ...

    def lookup(self, key_id: str) -> bytes | Forgotten | None:
        """The data key, why it is gone, or None for a key this store never had."""
        ...


def transform(value: Any, path: tuple[str, ...], fn: Callable[[str], str]) -> Any:
    """`value` with `fn` applied to each non-empty string at `path` (a copy
    along the path; untouched branches are shared)."""
    if not path:
        return fn(value) if isinstance(value, str) and value else value
    head, rest = path[0], path[1:]
    if head == "*":
        if isinstance(value, list | tuple):
            return [transform(v, rest, fn) for v in value]
        if isinstance(value, dict):
            return {k: transform(v, rest, fn) for k, v in value.items()}
        return value
    if isinstance(value, dict) and head in value:
        return {**value, head: transform(value[head], rest, fn)}
    return value


def seal_text(aead: AESGCM, key_id: str, stream_id: str, text: str) -> str:
    nonce = os.urandom(12)
    ct = aead.encrypt(nonce, text.encode(), stream_id.encode())
    return PREFIX + key_id + ":" + base64.b64encode(nonce + ct).decode()


def parse(text: str) -> tuple[str, bytes] | None:
    """(key id, nonce || ciphertext) of a sealed value, None if it is not one."""
    if not text.startswith(PREFIX):
        return None
    key_id, sep, blob = text[len(PREFIX) :].partition(":")
    if not sep:
        return None
    try:
        return key_id, base64.b64decode(blob, validate=True)
    except ValueError:
        return None


class Sealer:
    """The event filter that seals forgettable fields (`EventFilter`), and the
    `reveal` that opens them again on read, both with keys from a `KeyRing`."""

    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys
        self._aead: dict[str, AESGCM] = {}  # sealing: the stream's active keys
        # opening: what a key id gave, and when (a forget elsewhere shows after CACHE_S)
        self._opened: dict[str, tuple[float, AESGCM | Forgotten | None]] = {}

    def prepare(self, batches: Iterable[tuple[str, Sequence[NewEvent]]]) -> None:
        """Ready the keys of every stream whose batch has a field to seal, at
        once (`EventStore.append_many`: a group of new sessions)."""
        prepare = getattr(self.keys, "prepare", None)
        if prepare is not None:
            prepare(
                stream_id
                for stream_id, batch in batches
                if any(e.payload.type in SEALED_FIELDS for e in batch)
            )

    def __call__(self, stream_id: str, event: NewEvent) -> NewEvent:
        paths = SEALED_FIELDS.get(event.payload.type)
        if paths is None:
            return event
        data = event.payload.model_dump(mode="json")
        key_id, dek = self.keys.active(stream_id)
        aead = self._aead.get(key_id)
        if aead is None:
            aead = AESGCM(dek)
            remember(self._aead, key_id, aead)

        def seal(text: str) -> str:
            return seal_text(aead, key_id, stream_id, text)

        sealed = data
        for path in paths:
            sealed = transform(sealed, path, seal)
        if sealed is data:
            return event
        payload = PAYLOAD_TYPES[data["type"]].model_validate(sealed)
        return event.model_copy(update={"payload": payload})

    def _open(self, stream_id: str, text: str) -> str:
        found = parse(text)
        if found is None:
            return text
        key_id, blob = found
        now = time.monotonic()
        hit = self._opened.get(key_id)
        if hit is None or now - hit[0] > CACHE_S:
            key = self.keys.lookup(key_id)
            hit = (now, AESGCM(key) if isinstance(key, bytes) else key)
            remember(self._opened, key_id, hit)
        aead = hit[1]
        if isinstance(aead, Forgotten):
            return aead.text()
        if aead is None:  # not a key of this store: plain text that looks sealed
            return text
        try:
            return aead.decrypt(blob[:12], blob[12:], stream_id.encode()).decode()
        except InvalidTag:
            raise SealError(
                f"stream {stream_id}: a field sealed with data key {key_id} does not "
                "open (moved from another stream, or the key was replaced); "
                "run `orchestrator audit verify` on the stream"
            ) from None

    def seal_blob(self, stream_id: str, data: bytes) -> bytes:
        """A snapshot's bytes sealed with the stream's key (they hold projected plaintext)."""
        key_id, dek = self.keys.active(stream_id)
        nonce = os.urandom(12)
        ct = AESGCM(dek).encrypt(nonce, data, stream_id.encode())
        return PREFIX.encode() + key_id.encode() + b":" + nonce + ct

    def open_blob(self, stream_id: str, data: bytes) -> bytes | None:
        """A sealed snapshot's bytes, or None when they cannot be opened (rebuild)."""
        if not data.startswith(PREFIX.encode()):
            return data
        key_id, _, blob = data[len(PREFIX) :].partition(b":")
        key = self.keys.lookup(key_id.decode())
        if not isinstance(key, bytes):
            return None
        try:
            return AESGCM(key).decrypt(blob[:12], blob[12:], stream_id.encode())
        except InvalidTag:
            return None

    def forget_cached(self, key_ids: list[str]) -> None:
        """Drop keys this process holds (after `forget`)."""
        for k in key_ids:
            self._aead.pop(k, None)
            self._opened.pop(k, None)

    def reveal(self, record: dict[str, Any]) -> dict[str, Any]:
        """A decoded envelope (JSON data) with its sealed fields opened, or
        marked as forgotten."""
        paths = SEALED_FIELDS.get(record["type"])
        if paths is None:
            return record
        stream_id = record["stream_id"]

        def open_(text: str) -> str:
            return self._open(stream_id, text)

        payload = record["payload"]
        for path in paths:
            payload = transform(payload, path, open_)
        return {**record, "payload": payload}

"""Key-encryption keys (KEKs) for the data keys of sealed payload fields.

A local key file: base64 of 32 random bytes, mode 600, wrapping with AES key
wrap (RFC 3394, which checks integrity on unwrap). The key id is derived
from the key, so a wrong file is named as such instead of yielding garbage.
The embedded store makes its file under the state folder on first use.

Vault transit is not offered: it needs `hvac`, which this build does not
install (docs/audit.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from events.sealing import WrongKek
from orchestrator.config.settings import Settings
from orchestrator.errors import ConfigError

SETTING = "ORCH_DATA_KEK_FILE"
DEFAULT_NAME = "data-kek.key"


class FileKek:
    """A KEK read from a local file."""

    def __init__(self, key: bytes, setting: str) -> None:
        self._key = key
        self.id = "file:" + hashlib.sha256(b"orchestrator-kek:" + key).hexdigest()[:16]
        self.setting = setting

    def wrap(self, dek: bytes) -> bytes:
        return aes_key_wrap(self._key, dek)

    def unwrap(self, wrapped: bytes) -> bytes:
        try:
            return aes_key_unwrap(self._key, wrapped)
        except (InvalidUnwrap, ValueError):
            raise WrongKek(self.id) from None


def generate(path: Path) -> None:
    """Write a new KEK file readable by its owner only. It appears whole or not
    at all (written aside, then linked), and never replaces one: FileExistsError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kek-")  # mode 600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64encode(os.urandom(32)) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def load(path: Path, setting: str = SETTING) -> FileKek:
    """The KEK in `path`; a clear error naming the setting when it is unusable."""
    where = f"{setting}={path}"
    try:
        text = path.expanduser().read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot read the key-encryption key ({exc.strerror}); point the "
            "setting at the file that wrapped this store's data keys"
        ) from None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) not in (16, 24, 32):
        raise ConfigError(
            f"{where}: not a key-encryption key (expected base64 of 32 random bytes, "
            "e.g. `head -c32 /dev/urandom | base64 > FILE; chmod 600 FILE`)"
        )
    return FileKek(key, where)


def for_settings(settings: Settings) -> FileKek | None:
    """The configured KEK: the key file, or for the embedded store one made
    under the state folder on first use; None when a server store has none."""
    if settings.data_kek_file is not None:
        return load(settings.data_kek_file)
    if not settings.embedded_store:
        return None
    path = settings.state / DEFAULT_NAME
    if not path.exists():
        try:
            generate(path)
        except FileExistsError:  # another process made it first
            pass
    return load(path, f"{SETTING} (default {path})")

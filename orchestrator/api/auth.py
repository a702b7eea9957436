"""Bearer tokens and roles of the HTTP API.

A token is 32 random bytes (`new_token`); configuration keeps only its
sha256 (`api_tokens` in Settings), or names a secret-store entry holding the
token. A plain sha256 is enough: the token is random, not a password, so
there is nothing to guess that a slow hash would protect. A presented token
is hashed once and compared with every configured hash in constant time
(`hmac.compare_digest`, and no early exit), so timing tells nothing about
which hashes exist or how much of one matched.

Roles grant capabilities (`CAPABILITIES`); `admin` grants all of them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _random
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.config import secrets
from orchestrator.config.settings import ApiToken, Settings
from orchestrator.errors import ConfigError

__all__ = ["ROLES", "CAPABILITIES", "Principal", "TokenTable", "new_token", "token_hash"]

ROLES = ("submitter", "operator", "auditor", "admin")

# What each capability needs (admin always has it). Submitters submit and
# follow their jobs; operators answer confirmations, cancel and read
# everything; auditors read everything and change nothing.
CAPABILITIES: dict[str, frozenset[str]] = {
    "submit": frozenset({"submitter"}),
    "read_jobs": frozenset({"submitter", "operator", "auditor"}),
    "read_audit": frozenset({"operator", "auditor"}),
    "answer": frozenset({"operator"}),
    "cancel": frozenset({"operator"}),
    "elevate": frozenset({"operator"}),  # submit with allow_destructive
    "metrics": frozenset({"submitter", "operator", "auditor"}),
}


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str]

    @property
    def actor(self) -> str:
        """The `actor` of every event this caller's requests append."""
        return f"api:{self.name}"

    def may(self, capability: str) -> bool:
        return "admin" in self.roles or bool(self.roles & CAPABILITIES[capability])


def new_token() -> str:
    return "orch_" + _random.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenTable:
    """The configured tokens, by hash. Secret-store entries are read once,
    when the table is built (at API start): a missing entry is a start-up
    error naming it, not a token that silently never matches."""

    def __init__(self, entries: Iterable[tuple[str, Principal]]) -> None:
        self._entries = [(bytes.fromhex(h), p) for h, p in entries]

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenTable:
        return cls(
            (_hash_of(t, settings), Principal(t.principal, frozenset(t.roles)))
            for t in settings.api_tokens
        )

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, token: str) -> Principal | None:
        presented = hashlib.sha256(token.encode()).digest()
        found = None
        for digest, principal in self._entries:
            if hmac.compare_digest(presented, digest) and found is None:
                found = principal
        return found


def _hash_of(t: ApiToken, settings: Settings) -> str:
    if t.sha256 is not None:
        return t.sha256
    assert t.secret is not None
    # The API's own settings decide the sources, and where SecretAccessed goes.
    value = secrets.SecretStore(settings).get(t.secret, reader=f"api:token:{t.principal}")
    if value is None:
        raise ConfigError(
            f"api token of {t.principal!r}: the secret store has no entry "
            f"{t.secret!r}; add it or give the token's `sha256` instead"
        )
    return token_hash(value.get_secret_value())

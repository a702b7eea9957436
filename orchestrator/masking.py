"""Masking secrets out of text before it becomes an event (pure).

Two sources of truth: the secret values this service knows (its API keys,
tokens from the secret store), replaced wherever they appear; and the shapes
of well-known credentials (private key blocks, `sk-...`, GitHub, AWS, Slack
tokens, bearer headers, `password=...`), which catch secrets nobody declared.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["mask", "MASK"]

MASK = "***"
# Shorter values are too likely to be ordinary words to mask everywhere.
MIN_SECRET_LEN = 6

_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{30,}"),
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    re.compile(r"\bglpat-[A-Za-z0-9_\-]{20,}"),
]
# key=value and "key": "value" where the key says it is a secret: keep the key.
_ASSIGNED = re.compile(
    r"(?i)(\b(?:password|passwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|"
    r"client[_-]?secret|auth)[\w-]*[\"']?\s*[:=]\s*[\"']?)(?!(?:bearer|basic|token)\s)"
    r"([^\s\"',;]{4,})")
_BEARER = re.compile(r"(?i)(\bauthorization:\s*(?:bearer|basic|token)\s+)([^\s\"']+)|(\bbearer\s+)"
                     r"([A-Za-z0-9._~+/=-]{12,})")


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret value and credential-shaped string
    replaced by `***`. Idempotent: masking twice changes nothing more."""
    for value in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN},
                        key=len, reverse=True):
        text = text.replace(value, MASK)
    for rx in _PATTERNS:
        text = rx.sub(MASK, text)
    text = _BEARER.sub(lambda m: (m.group(1) or m.group(3)) + MASK, text)
    return _ASSIGNED.sub(lambda m: m.group(1) + MASK, text)

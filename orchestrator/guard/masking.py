"""Masking secrets out of text before it leaves the process (pure: no I/O,
no clock, no environment).

Two sources of truth: the secret values this service knows (its API keys,
tokens from the secret store: `orchestrator.config.secrets.known_values()`),
replaced wherever they appear; and the shapes of well-known credentials
(private key blocks, `sk-...`, GitHub, AWS, Slack tokens, bearer headers,
`password=...`), which catch secrets nobody declared.

A known value is masked in these forms (`variants`):
  - as it is;
  - JSON-escaped (`\\"`, `\\\\`, `\\uXXXX`, and `\\/` for encoders that escape `/`);
  - percent-encoded (upper- and lower-case hex, and `+` for spaces);
  - hex of its UTF-8 bytes, lower and upper case;
  - base64 and base64url, at each of the three alignments: a value embedded
    at byte offset 0, 1 or 2 (mod 3) of a larger encoded blob shares no
    full characters with the encoding of the value alone, so for each
    alignment we mask the characters that depend on the value's bytes only
    (the "stable inner" substring). At most two characters on each side,
    carrying at most 4 bits of the value each, are left.

Rules for short values, explicitly: a value shorter than `MIN_SECRET_LEN`
characters, or made of one repeated character (`"------"`), is not masked as a
known value (it would hit ordinary text everywhere); neither is any encoded
form shorter than `MIN_SECRET_LEN`. Empty and one-character values are
ignored, never an error. Credential-shaped patterns still apply to them.

Every occurrence of every form is found, overlapping ones included; each
maximal run of overlapping occurrences becomes one `***`.

Streams: `StreamMasker` masks output that arrives in chunks: it holds back at
most `len(longest form) - 1` characters between chunks (a secret can only be
cut in those), and its output, once flushed, equals `mask()` of the whole
text for known values. Credential patterns are applied to each piece it
emits (a pattern match cut between two pieces is not seen; known values
always are).

Two streams (stdout and stderr captured apart): `mask_streams` masks each,
and also a secret written partly to one and partly to the other, in either
order: the tail of one and the head of the other are masked when together
they form a known value (we cannot know how a reader will interleave them,
so both joins count). The shell tool reads both through one pipe, so there
the plain and streaming rules already apply.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from urllib.parse import quote, quote_plus

__all__ = ["mask", "MASK", "MIN_SECRET_LEN", "variants", "StreamMasker", "mask_streams", "maskable"]

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
    r"([^\s\"',;]{4,})"
)
_BEARER = re.compile(
    r"(?i)(\bauthorization:\s*(?:bearer|basic|token)\s+)([^\s\"']+)|(\bbearer\s+)"
    r"([A-Za-z0-9._~+/=-]{12,})"
)


def maskable(value: str) -> bool:
    """Whether `value` is masked as a known value (see the module docstring)."""
    return len(value) >= MIN_SECRET_LEN and len(set(value)) > 1


def _b64_inner(data: bytes, urlsafe: bool) -> list[str]:
    """The characters of the base64 encoding of `data` that do not depend on
    the bytes around it, for the value starting at byte offset 0, 1 and 2."""
    enc = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    out = []
    n = len(data)
    for k in range(3):
        text = enc(b"\0" * k + data).decode().rstrip("=")
        start, end = (8 * k + 5) // 6, (8 * k + 8 * n) // 6
        out.append(text[start:end])
    out.append(enc(data).decode())  # the value encoded alone, padding included
    return out


@lru_cache(maxsize=1024)
def variants(secret: str) -> frozenset[str]:
    """Every form of `secret` that is masked (empty when it is too short)."""
    if not maskable(secret):
        return frozenset()
    raw = secret.encode("utf-8", "surrogatepass")
    forms = {secret}
    for ascii_only in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        forms |= {escaped, escaped.replace("/", "\\/")}
    pct = quote(raw, safe="")
    forms |= {
        pct,
        re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), pct),
        quote_plus(raw, safe=""),
    }
    forms |= {raw.hex(), raw.hex().upper()}
    forms.update(_b64_inner(raw, urlsafe=False))
    forms.update(_b64_inner(raw, urlsafe=True))
    return frozenset(f for f in forms if maskable(f))


class _Matcher:
    """Finds every occurrence of a set of forms; at each position, the longest."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for s in secrets:
            if s:
                forms |= variants(s)
        self.longest = max((len(f) for f in forms), default=0)
        self._rx = (
            re.compile(
                "(?=(" + "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)) + "))"
            )
            if forms
            else None
        )

    def runs(self, text: str) -> list[list[int]]:
        """Maximal runs [start, end) of overlapping occurrences, in order."""
        if self._rx is None:
            return []
        runs: list[list[int]] = []
        for m in self._rx.finditer(text):
            start, end = m.start(), m.start() + len(m.group(1))
            if runs and start < runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], end)
            else:
                runs.append([start, end])
        return runs


@lru_cache(maxsize=64)
def _matcher(secrets: frozenset[str]) -> _Matcher:
    return _Matcher(secrets)


def _replace(text: str, runs: Sequence[Sequence[int]]) -> str:
    parts, at = [], 0
    for start, end in runs:
        parts += [text[at:start], MASK]
        at = end
    parts.append(text[at:])
    return "".join(parts)


def _merge(runs: Iterable[Sequence[int]]) -> list[list[int]]:
    merged: list[list[int]] = []
    for start, end in sorted(runs):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def mask_patterns(text: str) -> str:
    """Only the credential-shaped patterns (no known values)."""
    for rx in _PATTERNS:
        text = rx.sub(MASK, text)
    text = _BEARER.sub(lambda m: (m.group(1) or m.group(3)) + MASK, text)
    return _ASSIGNED.sub(lambda m: m.group(1) + MASK, text)


def mask(text: str, secrets: Iterable[str] = (), *, patterns: bool = True) -> str:
    """`text` with every known secret value (in every form `variants` lists)
    and, with `patterns`, every credential-shaped string replaced by `***`."""
    text = _replace(text, _matcher(frozenset(secrets)).runs(text))
    return mask_patterns(text) if patterns else text


def mask_streams(
    stdout: str, stderr: str, secrets: Iterable[str] = (), *, patterns: bool = True
) -> tuple[str, str]:
    """Both streams masked, including a secret split between them (the tail
    of one followed by the head of the other, in either order)."""
    m = _matcher(frozenset(secrets))
    spans: dict[str, list[Sequence[int]]] = {
        "out": list(m.runs(stdout)),
        "err": list(m.runs(stderr)),
    }
    for first, a, second, b in (("out", stdout, "err", stderr), ("err", stderr, "out", stdout)):
        if not a or not b or not m.longest:
            continue
        left = a[-(m.longest - 1) :] if m.longest > 1 else ""
        right = b[: m.longest - 1]
        offset = len(a) - len(left)
        for start, end in m.runs(left + right):
            if start < len(left) < end:
                spans[first].append((offset + start, len(a)))
                spans[second].append((0, end - len(left)))
    out = _replace(stdout, _merge(spans["out"]))
    err = _replace(stderr, _merge(spans["err"]))
    return (mask_patterns(out), mask_patterns(err)) if patterns else (out, err)


class StreamMasker:
    """Masks a stream that arrives in chunks: `feed(chunk)` returns what is
    safe to show now, `flush()` the rest at the end. Holds back at most
    `len(longest masked form) - 1` characters. Not thread-safe."""

    def __init__(self, secrets: Iterable[str] = (), *, patterns: bool = True) -> None:
        self._m = _Matcher(secrets)
        self.hold = max(self._m.longest - 1, 0)
        self._patterns = patterns
        self._ctx = ""  # the last `hold` raw characters seen
        self._emitted = 0  # how many of them were already shown (masked or not)

    def feed(self, chunk: str) -> str:
        return self._step(chunk, final=False)

    def flush(self) -> str:
        return self._step("", final=True)

    def _step(self, chunk: str, final: bool) -> str:
        buf = self._ctx + chunk
        done = self._emitted
        cut = len(buf) if final else max(len(buf) - self.hold, done)
        parts: list[str] = []
        at = done
        for start, end in self._m.runs(buf):
            if end <= done:
                continue  # shown already
            if start >= cut:
                break  # may still grow: held back
            if start < done:  # continues the run the last piece ended in
                at = end
            else:
                parts += [buf[at:start], MASK]
                at = end
            cut = max(cut, end)
        parts.append(buf[at:cut])
        keep_from = 0 if final else max(len(buf) - self.hold, 0)
        keep_from = min(keep_from, cut)
        self._ctx, self._emitted = ("", 0) if final else (buf[keep_from:], cut - keep_from)
        text = "".join(parts)
        return mask_patterns(text) if self._patterns else text

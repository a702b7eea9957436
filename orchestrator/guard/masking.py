"""Masking secrets out of text before it leaves the process (pure: no I/O,
no clock, no environment).

Two sources of truth: the secret values this service knows (its API keys,
tokens from the secret store: `orchestrator.config.secrets.known_values(settings)`),
replaced wherever they appear; and the shapes of well-known credentials
(`orchestrator.guard.credentials`: detect-secrets' regex plugins plus a few
of ours: private key blocks, cloud keys, JWTs, URLs with passwords,
`*_PASSWORD=`, `*_TOKEN=`, bearer headers), which catch secrets nobody declared.

A known value is masked in these forms (`variants`):
  - as it is;
  - JSON-escaped (`\\"`, `\\\\`, `\\uXXXX`, and `\\/` for encoders that escape
    `/`), and every character as `\\uXXXX` (lower and upper case hex);
  - Python escapes (`repr` of the text and of its UTF-8 bytes, `unicode_escape`,
    every byte as `\\xNN`, lower and upper case);
  - percent-encoded (upper- and lower-case hex, `+` for spaces, `/` kept or not);
  - hex of its UTF-8 bytes, lower and upper case, plain or one byte per
    space-separated pair (`od -An -tx1`, `xxd -p` wrapped);
  - base32 at each of its five alignments (as base64 below);
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

Split across lines: a form cut by line breaks and indentation (`base64 -w3`,
`od` output 16 bytes a line, a wrapped token) is found in the text with all
its whitespace removed, and the whole stretch of the original it covers,
the line breaks inside included, is masked.

Every occurrence of every form is found, overlapping ones included; each
maximal run of overlapping occurrences becomes one `***`. `holds_known`
answers whether a text holds a known value at all (the policy's
`secret-in-arguments` rule).

Streams: `StreamMasker` masks output that arrives in chunks: it holds back at
most `len(longest form) - 1` characters between chunks (a secret can only be
cut in those), and its output, once flushed, equals `mask()` of the whole
text for known values on one line (a form wrapped across chunked lines is
the event filter's to catch, on the whole text). Credential patterns are applied to each piece it
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
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from urllib.parse import quote, quote_plus

from orchestrator.guard.credentials import (
    TRIGGERS_CASED,
    TRIGGERS_LOWER,
    WHOLE_TEXT,
    Shape,
    split_shapes,
)

__all__ = [
    "mask",
    "MASK",
    "MIN_SECRET_LEN",
    "variants",
    "StreamMasker",
    "mask_streams",
    "maskable",
    "mask_patterns",
    "holds_known",
    "mask_spans",
]

MASK = "***"
# Shorter values are too likely to be ordinary words to mask everywhere.
MIN_SECRET_LEN = 6

_WS = re.compile(r"\s+")


def maskable(value: str) -> bool:
    """Whether `value` is masked as a known value (see the module docstring)."""
    return len(value) >= MIN_SECRET_LEN and len(set(value)) > 1


def _inner(enc: Callable[[bytes], bytes], data: bytes, bits: int, group: int) -> list[str]:
    """The characters of `enc(data)` that depend on `data`'s bytes only, for
    the value starting at each byte offset of the encoding's group of `group`
    bytes (`bits` bits a character), and `data` encoded alone."""
    out = [enc(data).decode()]
    n = len(data)
    for k in range(group):
        text = enc(b"\0" * k + data).decode().rstrip("=")
        start, end = (8 * k + bits - 1) // bits, (8 * k + 8 * n) // bits
        out.append(text[start:end])
    return out


def _escapes(secret: str, raw: bytes) -> set[str]:
    """JSON, Python and C-style escaped spellings of `secret`."""
    units = secret.encode("utf-16-be", "surrogatepass")
    u16 = [int.from_bytes(units[i : i + 2], "big") for i in range(0, len(units), 2)]
    forms = {
        "".join(f"\\u{u:04x}" for u in u16),
        "".join(f"\\u{u:04X}" for u in u16),
        "".join(f"\\x{b:02x}" for b in raw),
        "".join(f"\\x{b:02X}" for b in raw),
        repr(secret)[1:-1],
        repr(raw)[2:-1],
        secret.encode("unicode_escape").decode("ascii"),
    }
    for ascii_only in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        forms |= {escaped, escaped.replace("/", "\\/")}
    return forms


@lru_cache(maxsize=1024)
def variants(secret: str) -> frozenset[str]:
    """Every form of `secret` that is masked (empty when it is too short)."""
    if not maskable(secret):
        return frozenset()
    raw = secret.encode("utf-8", "surrogatepass")
    forms = {secret} | _escapes(secret, raw)
    for pct in (quote(raw, safe=""), quote(raw)):
        forms |= {pct, re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), pct)}
    forms.add(quote_plus(raw, safe=""))
    hexed = raw.hex()
    forms |= {hexed, hexed.upper(), raw.hex(" "), raw.hex(" ").upper()}
    forms.update(_inner(base64.b64encode, raw, 6, 3))
    forms.update(_inner(base64.urlsafe_b64encode, raw, 6, 3))
    forms.update(_inner(base64.b32encode, raw, 5, 5))
    return frozenset(f for f in forms if maskable(f))


class _Matcher:
    """Finds every occurrence of a set of forms; at each position, the longest."""

    def __init__(self, secrets: Iterable[str], *, stripped: bool = False) -> None:
        forms: set[str] = set()
        for s in secrets:
            if s:
                forms |= variants(s)
        if stripped:  # for the text with its whitespace removed
            forms = {f for f in (_WS.sub("", f) for f in forms) if maskable(f)}
        self.longest = max((len(f) for f in forms), default=0)
        alternation = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        # One compiled alternation finds whether any form is there (8x faster
        # than the lookahead, which must try every position); only a text that
        # holds one pays for the lookahead that finds overlapping occurrences.
        self._any = re.compile(alternation) if forms else None
        self._rx = re.compile("(?=(" + alternation + "))") if forms else None

    def runs(self, text: str) -> list[list[int]]:
        """Maximal runs [start, end) of overlapping occurrences, in order."""
        if self._rx is None or self._any is None:
            return []
        first = self._any.search(text)
        if first is None:
            return []
        runs: list[list[int]] = []
        for m in self._rx.finditer(text, max(first.start() - self.longest, 0)):
            start, end = m.start(), m.start() + len(m.group(1))
            if runs and start < runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], end)
            else:
                runs.append([start, end])
        return runs


@lru_cache(maxsize=64)
def _matcher(secrets: frozenset[str], stripped: bool = False) -> _Matcher:
    return _Matcher(secrets, stripped=stripped)


def _known_runs(text: str, secrets: frozenset[str]) -> list[list[int]]:
    """Runs of known values in `text`, including forms cut by whitespace."""
    runs = _matcher(secrets).runs(text)
    if not secrets:
        return runs
    joined = "".join(text.split())  # str.split: the same whitespace as `\s`, at C speed
    if len(joined) == len(text):
        return runs
    found = _matcher(secrets, True).runs(joined)
    if not found:
        return runs
    at = [i for i, c in enumerate(text) if not c.isspace()]  # joined index -> text index
    return _merge([*runs, *([at[s], at[e - 1] + 1] for s, e in found)])


def holds_known(text: str, secrets: Iterable[str]) -> bool:
    """Whether `text` holds a known value in any form `variants` lists."""
    return bool(text) and bool(_known_runs(text, frozenset(secrets)))


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


def pattern_runs(text: str) -> list[list[int]]:
    """Where credential shapes are in `text` (merged spans).

    Fast path: the shapes that need a literal (`credentials.TRIGGERS`) run
    once over the lines holding one, joined; the rest over the whole text."""
    spans: list[Sequence[int]] = []
    whole, by_line = split_shapes()
    for shape in whole:
        opening = _opening(shape)
        if opening is None or opening in text:
            spans += _shape_spans(shape, text, 0)
    lines = _candidate_lines(text)
    if lines:
        joined = "\n".join(text[a:b] for a, b in lines)
        offsets, at = [], 0
        for a, b in lines:
            offsets.append(at)
            at += b - a + 1
        for shape in by_line:
            for start, end in _shape_spans(shape, joined, 0):
                i = bisect_right(offsets, start) - 1
                base = lines[i][0] - offsets[i]
                spans.append((start + base, end + base))
    return _merge(spans)


@lru_cache(maxsize=64)
def _opening(shape: Shape) -> str | None:
    """The text a whole-text shape's pattern opens with (a `WHOLE_TEXT`
    prefix, plain text): absent from the text, the shape cannot match, and
    `in` finds that at C speed where the regex tries every `-` of a diff (a
    quarter of masking a diff's time)."""
    return next((p for p in WHOLE_TEXT if shape.rx.pattern.startswith(p)), None)


def _shape_spans(shape: Shape, text: str, base: int) -> list[tuple[int, int]]:
    out = []
    for m in shape.rx.finditer(text):
        group = shape.group if m.group(shape.group) else 0
        start, end = m.span(group)
        if end - start >= 4 and text[start:end] != MASK:
            out.append((base + start, base + end))
    return out


# One alternation each (8x faster than a `str.find` per literal).
_TRIGGER_LOWER = re.compile(
    "|".join(re.escape(t) for t in sorted(TRIGGERS_LOWER, key=len, reverse=True))
)
_TRIGGER_CASED = re.compile("|".join(re.escape(t) for t in TRIGGERS_CASED))


def _candidate_lines(text: str) -> list[tuple[int, int]]:
    """The (start, end) of every line holding a trigger literal, in order."""
    low = text.lower()
    if len(low) != len(text):  # a character whose lower case is longer: scan it all
        return [(0, len(text))] if text else []
    starts: set[int] = set()
    for rx, haystack in ((_TRIGGER_LOWER, low), (_TRIGGER_CASED, text)):
        end = -1
        for m in rx.finditer(haystack):
            if m.start() <= end:
                continue  # on the line already taken
            starts.add(text.rfind("\n", 0, m.start()) + 1)
            end = text.find("\n", m.start())
            if end < 0:
                break
    out = []
    for start in sorted(starts):
        end = text.find("\n", start)
        out.append((start, len(text) if end < 0 else end))
    return out


def mask_patterns(text: str) -> str:
    """Only the credential-shaped patterns (no known values)."""
    return _replace(text, pattern_runs(text)) if text else text


def mask_spans(text: str, secrets: Iterable[str] = ()) -> list[list[int]]:
    """The spans of `text` that `mask` replaces (known values and credential
    shapes, found on the text as it is), merged."""
    return _merge([*_known_runs(text, frozenset(secrets)), *pattern_runs(text)])


def mask(text: str, secrets: Iterable[str] = (), *, patterns: bool = True) -> str:
    """`text` with every known secret value (in every form `variants` lists,
    also cut across lines) and, with `patterns`, every credential-shaped
    string replaced by `***`."""
    text = _replace(text, _known_runs(text, frozenset(secrets)))
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

"""The search tool: which lines of the target match a pattern.

Python's `re` decides every match, on both backends, so the two cannot
disagree on syntax, Unicode tables, case folding or line handling. ripgrep
only narrows the file list: the pattern is translated into a PCRE2 pattern
that matches *at least* what the Python one matches (exact on ASCII, looser
where the engines differ), `rg -l` names the files that may match, and Python
scans those. A file Python would match is never dropped by rg, so the result
is the same as scanning every file in Python, just faster.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from re import _constants as _C  # Python's own regex parser: private, stable since 3.11
from re import _parser as _P
from typing import Any

from orchestrator.errors import CountMismatch, ToolInputError, ToolTimeout
from orchestrator.run.steps import CountRange, SearchStep
from orchestrator.tools.base import ToolResult
from orchestrator.tools.jail import Jail
from orchestrator.tools.paths import display_path, iter_files

__all__ = [
    "search",
    "search_pattern",
    "ripgrep",
    "compile_pattern",
    "cap_output",
    "decode_text",
    "check_count",
]

_RG_ARGV_BYTES = 256 * 1024  # well under ARG_MAX, so one chunk is one exec
_RG_ARGV_FILES = 4096


def search(
    workspace: Path,
    step: SearchStep,
    *,
    use_rg: bool | None = None,
    hidden: Callable[[str], bool] | None = None,
) -> ToolResult:
    """Lines matching `step.pattern` as `path:lineno:line`, sorted by path and
    line. `use_rg=None` uses ripgrep when installed; the result is identical:
    both scan the one file list of `iter_files` (the files `rg --files` walks,
    widened by the step's `hidden` / `no_ignore`). Files `hidden` says the
    policy denies are not searched, nor is a file hard-linked to one outside
    the workspace (the jail refuses to read it; ripgrep, which may open it,
    only narrows the list, so nothing of it reaches the result)."""
    started = time.monotonic()
    deadline = started + step.timeout_s
    rx = search_pattern(step)
    root = workspace.resolve()
    files = iter_files(root, step.glob, hidden, show_hidden=step.hidden, no_ignore=step.no_ignore)
    rg = ripgrep() if use_rg is not False else None
    if use_rg and rg is None:
        raise ToolInputError(
            "use_rg=True but no ripgrep with PCRE2 support is on PATH; "
            "install it, or leave use_rg unset to use the Python scanner."
        )
    if rg is not None and files:
        candidates = _rg_candidates(rg, root, files, superset_pcre2(rx), deadline, step.timeout_s)
        if candidates is not None:  # None: rg failed; scanning everything gives the same answer
            files = candidates
    head = bytearray()  # the output up to just past the cap; the rest is only counted
    total = count = 0
    for line in _scan(root, files, rx, deadline, step.timeout_s):
        data = line.encode("utf-8")
        total += len(data)
        count += 1
        if len(head) <= step.max_output_bytes:
            head += data
    result = ToolResult(
        output=cap_output(bytes(head), step.max_output_bytes, total),
        output_bytes=total,
        count=count,
        duration_s=time.monotonic() - started,
    )
    check_count("search", step.pattern, step.expect, result, "matching lines")
    return result


def search_pattern(step: SearchStep) -> re.Pattern[str]:
    """The step's pattern compiled; ToolInputError for one that is invalid or
    could never match a line."""
    rx = compile_pattern(step.pattern, literal=step.literal, ignore_case=step.ignore_case)
    if _requires_newline(rx):
        raise ToolInputError(
            f"search pattern {step.pattern!r} contains a newline, but search "
            "matches within one line, so it could never match. Search for "
            "one line of it, or use a replace step for multi-line edits."
        )
    return rx


def compile_pattern(
    pattern: str, *, literal: bool, ignore_case: bool, flags: int = 0
) -> re.Pattern[str]:
    """The step's pattern as a Python regex; a bad one is the user's to fix."""
    source = re.escape(pattern) if literal else pattern
    try:
        return re.compile(source, flags | (re.IGNORECASE if ignore_case else 0))
    except re.error as err:
        where = f" at position {err.pos}" if err.pos is not None else ""
        raise ToolInputError(
            f"pattern {pattern!r} is not a valid regular expression: "
            f"{err.msg}{where}. Fix it (Python `re` syntax), or set "
            "`literal: true` to match the text as is."
        ) from err


def check_count(
    tool: str, pattern: str, expect: CountRange | None, result: ToolResult, what: str
) -> None:
    """Raise CountMismatch (carrying `result`) when the count is outside `expect`."""
    if expect is None or expect.contains(result.count):
        return
    err = CountMismatch(
        f"{tool} {pattern!r} found {result.count} {what}, expected "
        f"{expect.describe()}; nothing was changed. Check the pattern and "
        "globs, or adjust `expect` if the code base really has that many."
    )
    err.result = result  # type: ignore[attr-defined]
    raise err


def decode_text(data: bytes) -> str:
    """Bytes as text the way ripgrep reads them: a UTF-8 or UTF-16 byte-order
    mark picks the encoding (and is dropped), otherwise UTF-8; bad bytes -> U+FFFD."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", "replace")
    if data.startswith(b"\xff\xfe"):
        return data[2:].decode("utf-16-le", "replace")
    if data.startswith(b"\xfe\xff"):
        return data[2:].decode("utf-16-be", "replace")
    return data.decode("utf-8", "replace")


def cap_output(data: bytes, limit: int, total: int | None = None) -> str:
    """At most `limit` bytes of `data` (cut on a UTF-8 boundary) plus a line
    saying how much was dropped; `total` is the full size if `data` is a prefix."""
    total = len(data) if total is None else total
    if total <= limit:
        return data.decode("utf-8", "replace")
    cut = min(limit, len(data))
    while 0 < cut < len(data) and (data[cut] & 0xC0) == 0x80:  # do not split a character
        cut -= 1
    head = data[:cut].decode("utf-8", "replace")
    sep = "" if not head or head.endswith("\n") else "\n"
    return f"{head}{sep}... [truncated {total - cut} bytes]\n"


# --- scanning ------------------------------------------------------------------------


def _scan(
    root: Path, files: list[str], rx: re.Pattern[str], deadline: float, timeout_s: float
) -> Iterator[str]:
    """`path:lineno:line\n` for every matching line, in file-list order."""
    find = rx.search
    with Jail(root) as jail:
        yield from _scan_in(jail, files, find, deadline, timeout_s)


def _scan_in(
    jail: Jail, files: list[str], find: Callable[[str], object], deadline: float, timeout_s: float
) -> Iterator[str]:
    for rel in files:
        if time.monotonic() > deadline:
            raise _timeout(timeout_s)
        try:
            data = jail.read(rel)
        except (OSError, ToolInputError):
            continue  # hard-linked out, vanished, swapped for a symlink out, unreadable
        if data is None:
            continue
        if b"\0" in data:
            continue  # binary
        lines = decode_text(data).split("\n")
        if lines[-1] == "":
            lines.pop()  # the terminator of the last line does not start another one
        shown = display_path(rel)
        for no, line in enumerate(lines, 1):
            if find(line):
                text = line[:-1] if line.endswith("\r") else line
                yield f"{shown}:{no}:{text}\n"


@lru_cache(maxsize=1)
def ripgrep() -> str | None:
    """The path of an `rg` built with PCRE2, or None."""
    rg = shutil.which("rg")
    if rg is None:
        return None
    try:
        ok = subprocess.run([rg, "--pcre2-version"], capture_output=True, timeout=10).returncode
    except (OSError, subprocess.TimeoutExpired):
        return None
    return rg if ok == 0 else None


def _rg_candidates(
    rg: str, root: Path, files: list[str], pcre: str, deadline: float, timeout_s: float
) -> list[str] | None:
    """The files that may match, by `rg -l` over explicit paths in argv chunks;
    None if rg fails (a PCRE2 limit, say), so the caller scans every file."""
    base = [
        rg,
        "--no-config",
        "--no-ignore",
        "--hidden",
        "--case-sensitive",
        "--pcre2",
        "--files-with-matches",
        "--null",
        "--no-messages",
        "--color",
        "never",
        "-e",
        pcre,
        "--",
    ]
    hits: set[str] = set()
    for chunk in _chunks(files):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout(timeout_s)
        try:
            proc = subprocess.run(
                base + chunk,
                cwd=root,
                capture_output=True,
                env={"LANG": "C.UTF-8"},
                timeout=remaining,
            )
        except subprocess.TimeoutExpired:
            raise _timeout(timeout_s) from None
        if proc.returncode not in (0, 1):
            return None
        hits.update(os.fsdecode(p) for p in proc.stdout.split(b"\0") if p)
    return [f for f in files if f in hits]


def _chunks(files: list[str]) -> list[list[str]]:
    chunks: list[list[str]] = [[]]
    size = 0
    for f in files:
        n = len(os.fsencode(f)) + 1
        if chunks[-1] and (size + n > _RG_ARGV_BYTES or len(chunks[-1]) >= _RG_ARGV_FILES):
            chunks.append([])
            size = 0
        chunks[-1].append(f)
        size += n
    return chunks


def _timeout(timeout_s: float) -> ToolTimeout:
    return ToolTimeout(
        f"search ran past its time limit of {timeout_s:g} s and was stopped. "
        "Narrow it with `glob`, or raise `timeout_s` on the step."
    )


# --- Python regex -> a PCRE2 superset, for ripgrep's file filter ---------------------
#
# Walks Python's own parse tree (re._parser, stable since 3.11), so Python-only
# syntax (`{,3}`, `\N{...}`, `(?a)`) never reaches PCRE2. Every rewrite may only
# widen what matches, because rg's answer is a filter, not the result:
#   - characters are exact on ASCII; wherever the engines' Unicode tables or
#     case folding could differ, every non-ASCII character is allowed;
#   - lookarounds, \b and \B are dropped, conditionals become alternations,
#     atomic groups and possessive repeats become plain ones; capturing groups
#     stay (as `()` when dropped) so group numbers do not move.

_NONASCII = r"\x{80}-\x{d7ff}\x{e000}-\x{10ffff}"  # all but ASCII and surrogates
# The only non-ASCII characters Python's re.IGNORECASE equates with ASCII ones
# (U+0130 and U+0131 ~ i, U+017F ~ s, U+212A ~ k); a test recomputes this.
FOLDS_TO_ASCII = (0x130, 0x131, 0x17F, 0x212A)
_CANDIDATES = tuple(range(128)) + FOLDS_TO_ASCII
_CATEGORY = {
    _C.CATEGORY_DIGIT: r"\d",
    _C.CATEGORY_NOT_DIGIT: r"\D",
    _C.CATEGORY_SPACE: r"\s",
    _C.CATEGORY_NOT_SPACE: r"\S",
    _C.CATEGORY_WORD: r"\w",
    _C.CATEGORY_NOT_WORD: r"\W",
}
_ANCHOR = {
    _C.AT_BEGINNING: "^",
    _C.AT_BEGINNING_STRING: r"\A",
    _C.AT_END: "$",
    _C.AT_END_STRING: r"\z",
}
_REPEATS = {_C.MAX_REPEAT: "", _C.MIN_REPEAT: "?", _C.POSSESSIVE_REPEAT: ""}
_PCRE2_MAX_REPEAT = 65535


def superset_pcre2(rx: re.Pattern[str]) -> str:
    """A PCRE2 pattern matching every line `rx` matches (and maybe more)."""
    tree = _P.parse(rx.pattern, rx.flags)
    dropped: set[int] = set()
    _collect_lookaround_groups(tree, inside=False, out=dropped)
    return _seq(tree, tree.state.flags, dropped)


def _seq(items: Any, flags: int, dropped: set[int]) -> str:
    return "".join(_node(op, av, flags, dropped) for op, av in items)


def _node(op: Any, av: Any, flags: int, dropped: set[int]) -> str:
    ic = bool(flags & re.IGNORECASE)
    if op is _C.LITERAL:
        if not ic:
            return _set([av])
        nonascii = av >= 0x80
        return _set(_members(re.escape(chr(av)), flags), nonascii)
    if op is _C.NOT_LITERAL:
        excluded = _members(re.escape(chr(av)), flags) if ic else (av,)
        return _set(excluded, negate=True)
    if op is _C.ANY:
        return "(?s:.)"
    if op is _C.IN:
        return _class(av, flags)
    if op is _C.CATEGORY:
        return _class([(op, av)], flags)
    if op is _C.AT:
        return _ANCHOR.get(av, "")  # \b, \B: dropped
    if op is _C.BRANCH:
        return "(?:" + "|".join(_seq(alt, flags, dropped) for alt in av[1]) + ")"
    if op is _C.SUBPATTERN:
        group, add, remove, body = av
        inner = _seq(body, (flags | add) & ~remove, dropped)
        return f"({inner})" if group else f"(?:{inner})"
    if op in _REPEATS:
        lo, hi, body = av
        lo = min(lo, _PCRE2_MAX_REPEAT)
        top = "" if hi == _C.MAXREPEAT or hi > _PCRE2_MAX_REPEAT else str(hi)
        return f"(?:{_seq(body, flags, dropped)}){{{lo},{top}}}{_REPEATS[op]}"
    if op is _C.ATOMIC_GROUP:
        return f"(?:{_seq(av, flags, dropped)})"
    if op is _C.GROUPREF:
        return "(?s:.*)" if ic or av in dropped else rf"\g{{{av}}}"
    if op is _C.GROUPREF_EXISTS:
        _, yes, no = av
        alts = [yes] + ([no] if no is not None else [_P.SubPattern(yes.state)])
        return "(?:" + "|".join(_seq(a, flags, dropped) for a in alts) + ")"
    if op in (_C.ASSERT, _C.ASSERT_NOT):
        groups: set[int] = set()
        _collect_lookaround_groups(av[1], inside=True, out=groups)
        return "()" * len(groups)  # keep the numbering
    return "(?s:.*)"  # an unknown node: match anything, the Python scan decides


def _class(items: Any, flags: int) -> str:
    negate = bool(items) and items[0][0] is _C.NEGATE
    body = items[1:] if negate else items
    if not flags & re.IGNORECASE and all(op in (_C.LITERAL, _C.RANGE) for op, _ in body):
        codes: list[tuple[int, int]] = [(av, av) if op is _C.LITERAL else av for op, av in body]
        return _ranges(codes, negate)
    parts = [
        {
            _C.LITERAL: lambda c: f"\\U{c:08x}",
            _C.RANGE: lambda r: f"\\U{r[0]:08x}-\\U{r[1]:08x}",
            _C.CATEGORY: lambda c: _CATEGORY[c],
        }[op](av)
        for op, av in body
    ]
    source = "[" + ("^" if negate else "") + "".join(parts) + "]"
    return _set([c for c in _members(source, flags) if c < 128], nonascii=True)


def _members(source: str, flags: int) -> tuple[int, ...]:
    """The ASCII (and fold-to-ASCII) characters Python's `source` matches."""
    return _members_cached(source, flags & (re.IGNORECASE | re.ASCII))


@lru_cache(maxsize=4096)
def _members_cached(source: str, flags: int) -> tuple[int, ...]:
    match = re.compile(source, flags).fullmatch
    return tuple(c for c in _CANDIDATES if match(chr(c)))


def _set(codes: Sequence[int], nonascii: bool = False, negate: bool = False) -> str:
    if len(codes) == 1 and not nonascii and not negate and not 0xD800 <= codes[0] <= 0xDFFF:
        char = chr(codes[0])
        return char if char.isascii() and char.isalnum() else rf"\x{{{codes[0]:x}}}"
    return _ranges([(c, c) for c in codes], negate, _NONASCII if nonascii else "")


def _ranges(pairs: list[tuple[int, int]], negate: bool, extra: str = "") -> str:
    """A PCRE2 class of code point ranges, leaving out surrogates (UTF mode
    rejects them, and decoded text never contains one)."""
    merged: list[list[int]] = []
    for lo, hi in sorted(pairs):
        for a, b in ((lo, min(hi, 0xD7FF)), (max(lo, 0xE000), hi)):
            if a > b:
                continue
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
    body = "".join(rf"\x{{{a:x}}}" if a == b else rf"\x{{{a:x}}}-\x{{{b:x}}}" for a, b in merged)
    body += extra
    if not body:
        return "(?s:.)" if negate else "(?!)"
    return f"[{'^' if negate else ''}{body}]"


def _children(op: Any, av: Any) -> list[Any]:
    if op is _C.BRANCH:
        return list(av[1])
    if op is _C.SUBPATTERN:
        return [av[3]]
    if op in _REPEATS:
        return [av[2]]
    if op in (_C.ASSERT, _C.ASSERT_NOT):
        return [av[1]]
    if op is _C.ATOMIC_GROUP:
        return [av]
    if op is _C.GROUPREF_EXISTS:
        return [av[1]] + ([av[2]] if av[2] is not None else [])
    return []


def _collect_lookaround_groups(items: Any, *, inside: bool, out: set[int]) -> None:
    for op, av in items:
        if inside and op is _C.SUBPATTERN and av[0]:
            out.add(av[0])
        for child in _children(op, av):
            _collect_lookaround_groups(
                child, inside=inside or op in (_C.ASSERT, _C.ASSERT_NOT), out=out
            )


def _requires_newline(rx: re.Pattern[str]) -> bool:
    """Whether every match of `rx` contains a newline (so no line can match)."""

    def needs(items: Any) -> bool:
        for op, av in items:
            if op is _C.LITERAL and av == 10:
                return True
            if op is _C.BRANCH and all(needs(alt) for alt in av[1]):
                return True
            if op in (_C.SUBPATTERN, _C.ATOMIC_GROUP, _C.ASSERT) and needs(_children(op, av)[0]):
                return True
            if op in _REPEATS and av[0] >= 1 and needs(av[2]):
                return True
        return False

    return needs(_P.parse(rx.pattern, rx.flags))

"""Rendering a file edit as a git-style diff, which `git apply` and
`files.plan_patch` accept (split from `files` to keep it small)."""

from __future__ import annotations

import difflib
import os
from itertools import compress, count
from operator import ne

from orchestrator.tools.base import Content, FileEdit, Spilled

__all__ = ["unified_diff"]


_FILE, _LINK = 0o100644, 0o120000


def unified_diff(edit: FileEdit) -> str:
    """A git-style diff of one edit, which `git apply` and `plan_patch` accept:
    a mode change as `old mode`/`new mode`, a file turned into a symlink (or
    back) as git shows it, a delete and a create."""
    was = edit.mode_before if edit.mode_before is not None else _FILE
    now = edit.mode_after if edit.mode_after is not None else _LINK if edit.link else _FILE
    if edit.before is not None and edit.after is not None and (was == _LINK) != (now == _LINK):
        gone = FileEdit(edit.path, edit.before, None, mode_before=was)
        return unified_diff(gone) + unified_diff(
            FileEdit(edit.path, None, edit.after, mode_after=now)
        )
    moved = edit.before is not None and edit.after is not None and was != now
    if edit.before == edit.after and not moved:
        return ""
    a, b = _git_quote("a/" + edit.path), _git_quote("b/" + edit.path)
    old = "/dev/null" if edit.before is None else a
    new = "/dev/null" if edit.after is None else b
    head = f"diff --git {a} {b}\n"
    if edit.before is None:
        head += f"new file mode {now:o}\n"
    if edit.after is None:
        head += f"deleted file mode {was:o}\n"
    if moved:
        head += f"old mode {was:o}\nnew mode {now:o}\n"
    if edit.before == edit.after:
        return head  # the mode alone
    before, after = _text(edit.before), _text(edit.after)
    if before is None or after is None:
        return head + f"Binary files {old} and {new} differ\n"
    if not before and not after:
        return head  # an empty file created or deleted: the header says it all
    out = [head, f"--- {old}\n", f"+++ {new}\n"]
    if edit.before is not None and edit.after is not None and len(before) == len(after):
        # An edit that keeps the line count (what a replace within lines
        # makes): pairing line i with line i is a correct diff, and skips the
        # matcher, which is quadratic in repeated lines (blank, `return`): 25 ms
        # on a 2,000-line module, ten times the rest of a replace step. The
        # matcher is then built empty (indexing `after` is a sixth of a batch
        # replace's time): get_grouped_opcodes reads `opcodes` when it is set.
        matcher = difflib.SequenceMatcher(None, (), (), autojunk=False)
        matcher.opcodes = _paired_opcodes(before, after)
    else:
        matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    for group in matcher.get_grouped_opcodes(3):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        out.append(f"@@ -{_range(i1, i2)} +{_range(j1, j2)} @@\n")
        for tag, a1, a2, b1, b2 in group:
            if tag == "equal":
                out += [_line(" ", s) for s in before[a1:a2]]
                continue
            out += [_line("-", s) for s in before[a1:a2]]
            out += [_line("+", s) for s in after[b1:b2]]
    return "".join(out)


def _paired_opcodes(before: list[str], after: list[str]) -> list[tuple[str, int, int, int, int]]:
    """difflib opcodes for two equally long line lists, line i against line i.
    The differing lines are found by C loops (`map`, `compress`): a replace
    changes a few lines of many, and comparing pairs in Python was a third
    of rendering its diff."""
    opcodes: list[tuple[str, int, int, int, int]] = []
    at = 0  # the first line not yet in an opcode
    for i in compress(count(), map(ne, before, after)):
        if opcodes and opcodes[-1][2] == i:  # continues the replaced run
            _, lo, _, _, _ = opcodes.pop()
        else:
            if i > at:
                opcodes.append(("equal", at, i, at, i))
            lo = i
        opcodes.append(("replace", lo, i + 1, lo, i + 1))
        at = i + 1
    if at < len(before):
        opcodes.append(("equal", at, len(before), at, len(before)))
    return opcodes


def _text(data: Content | None) -> list[str] | None:
    """Lines with their `\\n` (the last may lack it), or None for binary data
    and for content too big to hold (`Spilled`: as git does for big files)."""
    if data is None:
        return []
    if isinstance(data, Spilled):
        return None
    if b"\0" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # `splitlines` also ends lines at \r, \v, \x85 and others, which git does
    # not: its lines are ours when it found exactly one per \n (a \r\n stays
    # one line ending in \r\n either way); a tenth of the cost of the loop below.
    lines = text.splitlines(keepends=True)
    if len(lines) == text.count("\n") + (not text.endswith("\n") and bool(text)):
        return lines
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _line(tag: str, s: str) -> str:
    return f"{tag}{s}" if s.endswith("\n") else f"{tag}{s}\n\\ No newline at end of file\n"


def _range(lo: int, hi: int) -> str:
    n = hi - lo
    if n == 1:
        return f"{lo + 1}"
    return f"{lo if n == 0 else lo + 1},{n}"


_QUOTE = {
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
    '"': '\\"',
    "\\": "\\\\",
}


def _git_quote(name: str) -> str:
    """Quote a path the way git does when it has to (C escapes, octal bytes)."""
    if not any(c in _QUOTE or ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return name
    out = []
    for byte in os.fsencode(name):
        c = chr(byte)
        if c in _QUOTE:
            out.append(_QUOTE[c])
        elif byte < 0x20 or byte >= 0x7F:
            out.append(f"\\{byte:03o}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'

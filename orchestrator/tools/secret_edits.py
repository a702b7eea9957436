"""Files stay intact: the model sees secrets masked, the workspace keeps them.

A file the agent reads reaches it (and the log) with its secrets replaced by
`***` (`orchestrator.guard.masking`). When the agent writes that file back, or
patches it with context lines it copied from the masked view, the placeholder
must not land where the file had a real value. `keep_secrets` lines the new
content up with the masked view of the old one: every line the agent left as
it saw it gets the original back (the real value); a line the agent changed
around its masks (`postgresql://app:***@db/app` with another host) keeps the
real values in the same order when it holds as many masks as before; any
other change that puts the placeholder where the file had a secret is
refused, since the agent cannot know the value it would be replacing.

A `***` where the file had no secret (a Markdown rule, a glob) is ordinary
text and is written as given. Pure: no I/O.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from orchestrator.errors import ToolInputError
from orchestrator.guard.masking import MASK, mask_spans

__all__ = ["keep_secrets", "masked_view", "SecretOverwrite"]


class SecretOverwrite(ToolInputError):
    """A change would put the mask placeholder where the file has a secret."""


_Line = tuple[str, str, list[str]]  # (as the model saw it, as in the file, what each mask hides)


def _lines(before: str, spans: Sequence[Sequence[int]]) -> list[_Line]:
    """(line as the model saw it, the same line in the file, the text behind
    each of its masks), line by line of the masked view (a mask that covered
    several lines is one line here)."""
    pieces: list[tuple[str, str, bool]] = []
    at = 0
    for start, end in spans:
        pieces += [(before[at:start], before[at:start], False), (MASK, before[start:end], True)]
        at = end
    pieces.append((before[at:], before[at:], False))
    out: list[_Line] = []
    seen, real, hidden = "", "", []
    for shown, original, masked in pieces:
        if masked:
            seen, real, hidden = seen + shown, real + original, [*hidden, original]
            continue
        for line in shown.splitlines(keepends=True):
            seen, real = seen + line, real + line
            if line.endswith(("\n", "\r")):
                out.append((seen, real, hidden))
                seen, real, hidden = "", "", []
    if seen:
        out.append((seen, real, hidden))
    return out


def _refill(path: str, number: int, line: str, old: _Line | None) -> str:
    """A changed line with its masks given their real values back (in order,
    when it holds as many as the line it replaces); SecretOverwrite when it
    would put a mask over a secret otherwise."""
    if MASK not in line or old is None or not old[2]:
        return line
    parts = line.split(MASK)
    if len(parts) - 1 == len(old[2]):
        return "".join(p + v for p, v in zip(parts, [*old[2], ""]))
    raise SecretOverwrite(
        f"{path}: line {number} would put the mask placeholder {MASK} where "
        "the file holds a secret value (the model sees secrets masked); "
        "nothing was written. Leave the masked values as they are, or change "
        "the secret outside the agent"
    )


def masked_view(before: str, secrets: Sequence[str]) -> str | None:
    """`before` as the model saw it, or None when it holds no secret."""
    spans = mask_spans(before, secrets)
    return "".join(seen for seen, _, _ in _lines(before, spans)) if spans else None


def keep_secrets(path: str, before: str | None, after: str, secrets: Sequence[str]) -> str:
    """`after` with every unchanged masked line holding its real value again;
    SecretOverwrite when a changed line would write `***` over a secret."""
    if before is None or MASK not in after:
        return after
    spans = mask_spans(before, secrets)
    if not spans:
        return after
    pairs = _lines(before, spans)
    shown = [seen for seen, _, _ in pairs]
    new = after.splitlines(keepends=True)
    out: list[str] = []
    matcher = difflib.SequenceMatcher(None, shown, new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            out += [real for _, real, _ in pairs[i1:i2]]
            continue
        if tag != "replace":
            out += new[j1:j2]  # inserted lines: a `***` there is the model's own text
            continue
        old = pairs[i1:i2]
        for j in range(j1, j2):
            # Line by line when the counts agree; else the masked lines in order.
            if i2 - i1 == j2 - j1:
                mate: _Line | None = old[j - j1]
            else:
                mate = _merged([o for o in old if o[2]])
            out.append(_refill(path, j + 1, new[j], mate))
    return "".join(out)


def _merged(lines: list[_Line]) -> _Line | None:
    """Several masked lines as one (for a change that joined or split them)."""
    if not lines:
        return None
    return ("".join(s for s, _, _ in lines), "", [v for _, _, h in lines for v in h])

"""Files stay intact: the model sees secrets masked, the workspace keeps them.

A file the agent reads reaches it (and the log) with its secrets replaced by
`***` (`orchestrator.guard.masking`). When the agent writes that file back, or
patches it with context lines it copied from the masked view, the placeholder
must not land where the file had a real value. `keep_secrets` lines the new
content up with the masked view of the old one: every line the agent left as
it saw it gets the original back (the real value), and a line the agent
changed that still holds the placeholder where the file had a secret is
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


def _lines(before: str, spans: Sequence[Sequence[int]]) -> list[tuple[str, str]]:
    """(line as the model saw it, the same line in the file), line by line of
    the masked view (a mask that covered several lines is one line here)."""
    pieces: list[tuple[str, str, bool]] = []
    at = 0
    for start, end in spans:
        pieces += [(before[at:start], before[at:start], False), (MASK, before[start:end], True)]
        at = end
    pieces.append((before[at:], before[at:], False))
    out: list[tuple[str, str]] = []
    seen, real = "", ""
    for shown, original, masked in pieces:
        if masked:
            seen, real = seen + shown, real + original
            continue
        for line in shown.splitlines(keepends=True):
            seen, real = seen + line, real + line
            if line.endswith(("\n", "\r")):
                out.append((seen, real))
                seen, real = "", ""
    if seen:
        out.append((seen, real))
    return out


def masked_view(before: str, secrets: Sequence[str]) -> str | None:
    """`before` as the model saw it, or None when it holds no secret."""
    spans = mask_spans(before, secrets)
    return "".join(seen for seen, _ in _lines(before, spans)) if spans else None


def keep_secrets(path: str, before: str | None, after: str, secrets: Sequence[str]) -> str:
    """`after` with every unchanged masked line holding its real value again;
    SecretOverwrite when a changed line would write `***` over a secret."""
    if before is None or MASK not in after:
        return after
    spans = mask_spans(before, secrets)
    if not spans:
        return after
    pairs = _lines(before, spans)
    shown = [seen for seen, _ in pairs]
    new = after.splitlines(keepends=True)
    out: list[str] = []
    matcher = difflib.SequenceMatcher(None, shown, new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            out += [real for _, real in pairs[i1:i2]]
            continue
        if tag == "replace" and any(MASK in seen and seen != real for seen, real in pairs[i1:i2]):
            for j in range(j1, j2):
                if MASK in new[j]:
                    raise SecretOverwrite(
                        f"{path}: line {j + 1} would put the mask placeholder {MASK} where "
                        "the file holds a secret value (the model sees secrets masked); "
                        "nothing was written. Leave that line as it is, or change the "
                        "secret outside the agent"
                    )
        out += new[j1:j2]
    return "".join(out)

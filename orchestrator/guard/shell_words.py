"""Shell words as a program will see them: a tree-sitter-bash word node after
quote removal, and whether run time decides it (an expansion, a
substitution) or turns it into several (an unquoted glob or brace
expansion). Pure; `orchestrator.guard.commands` builds on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_GLOB = re.compile(r"(?<!\\)[*?\[]")


@dataclass(frozen=True)
class Word:
    """A shell word after quote removal, and whether run time decides it."""

    text: str
    dynamic: bool = False
    glob: bool = False
    # The text as written, expansions left out: what bash would evaluate
    # again if the word reached arithmetic (`$` here is quoted, not expanded).
    static: str | None = None

    @property
    def literal(self) -> str:
        return self.text if self.static is None else self.static


# Node types whose text is only known at run time.
DYNAMIC_NODES = {
    "simple_expansion",
    "expansion",
    "command_substitution",
    "process_substitution",
    "arithmetic_expansion",
    "ansi_c_string",
}
_ESCAPE = re.compile(r"\\(.)", re.S)
_DQ_ESCAPE = re.compile(r"\\([$`\"\\\n])")


def word(node: Any) -> Word:
    t = node.type
    text = node.text.decode(errors="replace")
    if t == "word":
        glob = bool(_GLOB.search(text)) or is_brace(text)
        return Word(_ESCAPE.sub(r"\1", text), glob=glob)
    if t == "number":
        return Word(text)
    if t == "raw_string":
        return Word(text[1:-1])
    if t in ("string", "translated_string"):
        parts, static, dynamic = [], [], False
        for c in node.children:
            if c.type == "string_content":
                parts.append(_DQ_ESCAPE.sub(r"\1", c.text.decode(errors="replace")))
                static.append(parts[-1])
            elif c.type in DYNAMIC_NODES:
                dynamic = True
                parts.append(c.text.decode(errors="replace"))
        return Word("".join(parts), dynamic=dynamic, static="".join(static))
    if t == "concatenation":
        parts = [word(c) for c in node.children]
        joined = "".join(p.text for p in parts)
        return Word(
            joined,
            dynamic=any(p.dynamic for p in parts),
            glob=any(p.glob for p in parts) or is_brace(joined),
            static="".join(p.literal for p in parts),
        )
    if t == "ansi_c_string":  # decoded at run time: `$'\x24(id)'` is `$(id)`
        return Word(text, dynamic=True, static=text)
    return Word(text, dynamic=True, static="")


def is_brace(text: str) -> bool:
    """Unquoted brace expansion (`{a,b}`, `{1..3}`) turns one word into several."""
    return "{" in text and "}" in text and ("," in text or ".." in text)

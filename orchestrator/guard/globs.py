"""The glob language of path rules and tool include lists: `**` spans
folders, a glob without `/` matches the name at any depth, `!` excludes.

Pure string matching, shared by the policy (path rules), the tools (include
globs) and the sandbox (what it masks), so all three agree on what a glob
names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from orchestrator.errors import ToolInputError


def _translate(glob: str) -> str:
    """One glob as a regex over a relative POSIX path. `**` crosses `/`, `*` and
    `?` do not, `[..]` is a class, `{a,b}` an alternation; a glob without `/`
    matches the basename at any depth, and a trailing `/` means the whole tree."""
    if glob.endswith("/"):
        glob += "**"
    anchored = "/" in glob
    glob = glob.lstrip("/")
    out: list[str] = []
    i, n, depth = 0, len(glob), 0
    while i < n:
        c = glob[i]
        if glob.startswith("**/", i) and (i == 0 or glob[i - 1] == "/"):
            out.append("(?:.*/)?")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            start = i + 1
            neg = glob[start : start + 1] in ("!", "^")
            start += neg
            j = glob.find("]", start + 1 if glob[start : start + 1] == "]" else start)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = glob[start:j]
                for special in ("\\", "^", "[", "]"):
                    body = body.replace(special, "\\" + special)
                out.append(f"[{'^/' if neg else ''}{body}]")
                i = j + 1
                continue
        elif c == "{":
            out.append("(?:")
            depth += 1
        elif c == "," and depth:
            out.append("|")
        elif c == "}" and depth:
            out.append(")")
            depth -= 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(glob[i + 1]))
            i += 1
        else:
            out.append(re.escape(c))
        i += 1
    out.extend(")" * depth)
    body = "".join(out)
    return body if anchored else f"(?:.*/)?{body}"


@lru_cache(maxsize=256)
def glob_matcher(globs: tuple[str, ...], *, fold_case: bool = False) -> Callable[[str], bool]:
    """A predicate over relative POSIX paths. Globs starting with `!` exclude;
    no include glob means every file. With `fold_case` the include globs
    ignore case and the excludes do not (so folding only ever matches
    more): protected paths use it, because `.ENV` on a case-insensitive
    mount is `.env`, and `.Git/hooks` is `.git/hooks`."""
    inc = [g for g in globs if not g.startswith("!")]
    exc = [g[1:] for g in globs if g.startswith("!")]
    flags = re.IGNORECASE if fold_case else 0
    try:
        inc_rx = re.compile("|".join(f"(?:{_translate(g)})" for g in inc), flags) if inc else None
        exc_rx = re.compile("|".join(f"(?:{_translate(g)})" for g in exc)) if exc else None
    except re.error as err:
        raise ToolInputError(
            f"glob list {list(globs)!r} is malformed ({err}); check brackets and braces."
        ) from err

    def match(path: str) -> bool:
        if inc_rx is not None and inc_rx.fullmatch(path) is None:
            return False
        return exc_rx is None or exc_rx.fullmatch(path) is None

    return match

"""Workspace paths: every tool reaches files through here, so that no step can
read or write outside its target, and both search backends see one file list.

Opening, writing and deleting go through `orchestrator.tools.jail`, which
walks a path component by component under the workspace root at the moment
of use, so a symlink planted after planning (or mid-walk) is still caught.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path, PurePosixPath

from orchestrator.errors import ToolInputError
from orchestrator.tools.ignore import IgnoreRules
from orchestrator.tools.jail import Jail

__all__ = ["resolve_in_workspace", "iter_files", "glob_matcher", "display_path"]


def resolve_in_workspace(workspace: Path, rel: str) -> Path:
    """The real path of `rel` inside `workspace`, symlinks followed by the
    jail's walk; refuses absolute paths and anything (`..`, a symlink) that
    ends up outside. For naming a place (a cwd), not for opening: open
    through `Jail`, which holds the directories it walked."""
    with Jail(workspace) as jail:
        return jail.root / jail.resolve(rel).rel


def normalize_rel(rel: str) -> str:
    """`./a//b/../c` -> `a/c`: the one spelling an edit is recorded under."""
    return PurePosixPath(os.path.normpath(rel)).as_posix()


def display_path(rel: str) -> str:
    """A file name as printable UTF-8 text (undecodable bytes as \\xNN)."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


# --- globs ---------------------------------------------------------------------------


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
def glob_matcher(globs: tuple[str, ...]) -> Callable[[str], bool]:
    """A predicate over relative POSIX paths. Globs starting with `!` exclude;
    no include glob means every file."""
    inc = [g for g in globs if not g.startswith("!")]
    exc = [g[1:] for g in globs if g.startswith("!")]
    try:
        inc_rx = re.compile("|".join(f"(?:{_translate(g)})" for g in inc)) if inc else None
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


# --- listing -------------------------------------------------------------------------


def iter_files(
    workspace: Path,
    globs: Iterable[str] = (),
    hidden: Callable[[str], bool] | None = None,
    *,
    under: str = "",
    show_hidden: bool = False,
    no_ignore: bool = False,
) -> list[str]:
    """Sorted relative POSIX paths of the regular files under `workspace` (or
    its folder `under`, paths then relative to it) that match `globs`: the
    files `rg --files` lists there (orchestrator.tools.ignore says which:
    ignore files and hidden names apply unless `show_hidden` / `no_ignore`).
    `.git` is never entered and, as rg without `--follow`, no symlink is
    listed or followed. Files for which `hidden(rel)` is true (the policy's
    denied paths) are left out."""
    root = workspace.resolve()
    match = glob_matcher(tuple(globs))
    rules = IgnoreRules(root, hidden=show_hidden, no_ignore=no_ignore)
    start = "" if under in ("", ".") else under.strip("/") + "/"
    found: list[str] = []
    stack = [rules.top(start)]
    while stack:
        level = stack.pop()
        try:
            entries = list(os.scandir(root / level.rel if level.rel else root))
        except (NotADirectoryError, FileNotFoundError, PermissionError):
            continue
        for entry in entries:
            if entry.name == ".git":
                continue  # the repository itself (a directory, or a worktree's pointer file)
            rel = f"{level.rel}{entry.name}"
            is_dir = entry.is_dir(follow_symlinks=False)
            if not is_dir and not entry.is_file(follow_symlinks=False):
                continue  # a symlink, fifo, socket or device: rg lists none of them
            if rules.skips(level, rel, entry.name, is_dir):
                continue
            if is_dir:
                stack.append(rules.enter(level, rel + "/"))
                continue
            shown = rel[len(start) :]
            if match(shown) and not (hidden is not None and hidden(shown)):
                found.append(shown)
    found.sort()
    return found

"""Workspace paths: every tool reaches files through here, so that no step can
read or write outside its target, and both search backends see one file list.

Opening, writing and deleting go through `orchestrator.tools.jail`, which
walks a path component by component under the workspace root at the moment
of use, so a symlink planted after planning (or mid-walk) is still caught.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from orchestrator.guard.globs import glob_matcher
from orchestrator.tools.ignore import IgnoreRules
from orchestrator.tools.jail import Jail

__all__ = ["resolve_in_workspace", "iter_files", "display_path"]


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
    """Sorted relative POSIX paths of the regular files under `workspace` (the
    workspace already resolved: the callers pass `Jail.root` or resolve it;
    or its folder `under`, paths then relative to it) that match `globs`: the
    files `rg --files` lists there (orchestrator.tools.ignore says which:
    ignore files and hidden names apply unless `show_hidden` / `no_ignore`).
    `.git` is never entered and, as rg without `--follow`, no symlink is
    listed or followed. Files for which `hidden(rel)` is true (the policy's
    denied paths) are left out."""
    base = str(workspace).rstrip("/") + "/"  # folders as strings: cheaper than Paths here
    match = glob_matcher(tuple(globs))
    rules = IgnoreRules(workspace, hidden=show_hidden, no_ignore=no_ignore)
    start = "" if under in ("", ".") else under.strip("/") + "/"
    found: list[str] = []
    stack = [rules.top(start)]
    while stack:
        level = stack.pop()
        try:
            entries = list(os.scandir(base + level.rel))
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

"""Workspace paths: every tool reaches files through here, so that no step can
read or write outside its target, and both search backends see one file list.

Opening, writing and deleting go through `orchestrator.tools.jail`, which
walks a path component by component under the workspace root at the moment
of use, so a symlink planted after planning (or mid-walk) is still caught.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from orchestrator.guard.globs import glob_matcher
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
    workspace: Path, globs: Iterable[str] = (), hidden: Callable[[str], bool] | None = None
) -> list[str]:
    """Sorted relative POSIX paths of the regular files under `workspace` that
    match `globs`. Skips `.git`, does not descend into symlinked directories, and
    keeps a symlinked file only if it points to a regular file inside. Files
    for which `hidden(rel)` is true (the policy's denied paths) are left out."""
    root = workspace.resolve()
    match = glob_matcher(tuple(globs))
    found: list[str] = []
    stack = [""]
    while stack:
        prefix = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(root, prefix) if prefix else root))
        except (NotADirectoryError, FileNotFoundError, PermissionError):
            continue
        for entry in entries:
            if entry.name == ".git":
                continue  # the repository itself (a directory, or a worktree's pointer file)
            rel = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                stack.append(rel + "/")
                continue
            if entry.is_symlink():
                if not _symlink_ok(root, entry.path):
                    continue
            elif not entry.is_file(follow_symlinks=False):
                continue  # fifo, socket, device: reading could block or mean nothing
            if match(rel) and not (hidden is not None and hidden(rel)):
                found.append(rel)
    found.sort()
    return found


def _symlink_ok(root: Path, path: str) -> bool:
    try:
        real = Path(path).resolve(strict=True)
        return real.is_relative_to(root) and stat.S_ISREG(real.stat().st_mode)
    except (OSError, RuntimeError):
        return False

"""Old content kept beside a file while an apply replaces it, when only its
hash is held.

A big file's `before` side is a hash (`Spilled` without a path): enough to
check the file is as planned, not to write it back. So before the apply
renames over (or unlinks) such a file, the file gets a second name in its
folder (a hard link: no copy, no extra space while both names exist); a
failed apply renames it back, a finished one removes the name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Sequence

from orchestrator.tools.base import FileEdit, Spilled
from orchestrator.tools.jail import MAX_NAME_BYTES, Spot

__all__ = ["Aside", "forget", "put_back", "set_aside"]

Aside = dict[str, tuple[int, str]]  # edit path -> (folder descriptor, second name)


def set_aside(targets: Sequence[tuple[FileEdit, Spot]]) -> Aside:
    """A second name for each existing file whose old content is not held."""
    out: Aside = {}
    for edit, spot in targets:
        before = edit.before
        if not (isinstance(before, Spilled) and before.path is None) or spot.dirfd is None:
            continue
        name = f".{spot.name}.{secrets.token_hex(6)}.old"[-MAX_NAME_BYTES:]
        os.link(
            spot.name, name, src_dir_fd=spot.dirfd, dst_dir_fd=spot.dirfd, follow_symlinks=False
        )
        out[edit.path] = (spot.dirfd, name)
    return out


def put_back(aside: Aside, edit: FileEdit, spot: Spot) -> bool:
    """Rename `edit`'s old content back in place; False when none was set aside."""
    held = aside.pop(edit.path, None)
    if held is None:
        return False
    os.replace(held[1], spot.name, src_dir_fd=held[0], dst_dir_fd=spot.dirfd)
    return True


def forget(aside: Aside) -> None:
    """Remove the second names (the apply is done, or was undone)."""
    for dirfd, name in aside.values():
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dirfd)
    aside.clear()

"""What every tool adapter returns, and the file edits effectful tools plan.

Effectful file tools work in two phases so that effects are exactly-once:
`plan(...)` reads the workspace and returns `FileEdit`s (before/after bytes);
the runner records their hashes in ToolCallStarted, then `apply_edits` makes
them all-or-nothing. A redelivered task compares the recorded hashes with the
files on disk to know which edits already happened.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from orchestrator.errors import ToolError

# A file bigger than this is never read whole into memory: a shell call's
# changeset keeps it as a `Spilled` reference to a file on disk.
SPILL_BYTES = 1 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Spilled:
    """File content too big to hold in memory: its size, its sha256 and the
    file on disk that has it (`path` None: only its hash is known, enough to
    check a file is still as it was, not to write it)."""

    size: int
    sha256: str
    path: str | None = None


Content = bytes | Spilled


def content_hash(data: Content | None) -> str | None:
    if isinstance(data, Spilled):
        return data.sha256
    return None if data is None else hashlib.sha256(data).hexdigest()


def content_size(data: Content | None) -> int:
    if isinstance(data, Spilled):
        return data.size
    return 0 if data is None else len(data)


def read_content(path: str, size: int, *, keep: bool = True, limit: int = SPILL_BYTES) -> Content:
    """The content of the regular file `path` of `size` bytes: its bytes, or
    past `limit` a `Spilled` hashed in chunks (`keep`: naming `path`)."""
    with open(path, "rb") as f:
        if size <= limit:
            data = f.read(limit + 1)
            if len(data) <= limit:
                return data
            h, total = hashlib.sha256(data), len(data)
            del data
        else:
            h, total = hashlib.sha256(), 0
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            total += len(chunk)
    return Spilled(total, h.hexdigest(), path if keep else None)


def copy_content(src: str, dst_fd: int, want: str) -> int:
    """Copy the file `src` into the open `dst_fd` in chunks, checking that
    its sha256 is `want` (a ToolError if not: the kept file was damaged)."""
    h, total = hashlib.sha256(), 0
    with open(src, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            total += len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(dst_fd, view) :]
    if h.hexdigest() != want:
        raise ToolError(
            f"the kept content {src} no longer has its recorded hash {want[:12]}; "
            "nothing was written from it. Run the step again."
        )
    return total


@dataclass(frozen=True)
class FileEdit:
    path: str  # relative to the workspace, POSIX separators
    before: Content | None  # None: the file did not exist
    after: Content | None  # None: the file is deleted
    link: bool = (
        False  # a new symlink (a patch's mode 120000): `after` is its target, as git keeps it
    )
    # git's modes (0o100644, 0o100755, 0o120000), when the edit knows them (a
    # shell changeset does): a symlink's content is its target, as git keeps it.
    mode_before: int | None = None
    mode_after: int | None = None

    @property
    def before_hash(self) -> str | None:
        return content_hash(self.before)

    @property
    def after_hash(self) -> str | None:
        return content_hash(self.after)


@dataclass(frozen=True)
class ToolResult:
    """A finished tool call. `output` is already truncated to the step's cap;
    `output_bytes` is the size before truncation."""

    output: str = ""
    output_bytes: int = 0
    exit_code: int = 0
    count: int = 0  # matches (search), replacements (replace), files (write/patch)
    edits: tuple[FileEdit, ...] = field(default=())
    cpu_s: float = 0.0
    duration_s: float = 0.0


@dataclass(frozen=True)
class Plan:
    """The file edits a step will make, planned before the policy decides
    (reads only), and its count (replacements for replace, else files)."""

    edits: list[FileEdit]
    count: int


class Interrupted(ToolError):
    """The worker died while an effectful call was running."""

"""What every tool adapter returns, and the file edits effectful tools plan.

Effectful file tools work in two phases so that effects are exactly-once:
`plan(...)` reads the workspace and returns `FileEdit`s (before/after bytes);
the runner records their hashes in ToolCallStarted, then `apply_edits` makes
them all-or-nothing. A redelivered task compares the recorded hashes with the
files on disk to know which edits already happened.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from orchestrator.errors import ToolError


def content_hash(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class FileEdit:
    path: str  # relative to the workspace, POSIX separators
    before: bytes | None  # None: the file did not exist
    after: bytes | None  # None: the file is deleted
    link: bool = (
        False  # a new symlink (a patch's mode 120000): `after` is its target, as git keeps it
    )

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

"""A job's targets written as mappings (`{path, vars, toolchains}`) and the
`toolchains:` a sandboxed command gets on its PATH.

A toolchain is a directory (a venv, a pyenv version, a node install) the
sandbox mounts read-only, its `bin/` first on PATH in the order given. The
spec names it as an absolute path, or relative to each target (`.venv`, the
workspace's own venv). The spelling is checked when the spec is read; that the
directory exists, and that a relative one stays inside its target once
symlinks are followed, is checked when the target is resolved, so a missing
toolchain fails that target alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = ["TargetSpec", "Toolchain", "VarName", "resolve_toolchains"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _target_entry(value: str) -> str:
    if not value.strip():
        raise ValueError("target is empty; give a directory or a glob of directories")
    if "\x00" in value:
        raise ValueError("target contains a NUL byte; no path can have that name")
    return value


def _toolchain(value: str) -> str:
    if not value.strip():
        raise ValueError("toolchain is empty; give a directory such as .venv or /opt/node")
    if _CONTROL.search(value):
        raise ValueError(f"toolchain {value!r} contains a control character or NUL byte")
    if value.startswith("~"):
        raise ValueError(
            f"toolchain {value!r} starts with ~; give an absolute path, or one "
            "relative to the target (e.g. .venv)"
        )
    if ".." in PurePosixPath(value).parts:
        raise ValueError(
            f"toolchain {value!r} contains `..`; give an absolute path, or one "
            "inside the target (e.g. .venv)"
        )
    return value


def _var_name(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"variable name {value!r} is not an identifier; use letters, digits and "
            "`_` (not starting with a digit), so that steps can say {{ vars.NAME }}"
        )
    return value


TargetEntry = Annotated[str, AfterValidator(_target_entry)]
Toolchain = Annotated[str, AfterValidator(_toolchain)]
VarName = Annotated[str, AfterValidator(_var_name)]


class TargetSpec(BaseModel):
    """One `targets:` entry written as a mapping: a directory (or a glob of
    them) with its own variables for the step templates and, if given, its own
    toolchains instead of the job's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: TargetEntry
    vars: dict[VarName, str] = Field(default_factory=dict)
    toolchains: tuple[Toolchain, ...] | None = None


def resolve_toolchains(
    toolchains: Sequence[str], target: Path
) -> tuple[tuple[str, ...], str | None]:
    """The toolchains as absolute paths for one target (relative ones joined to
    it, symlinks followed), or an error saying which one cannot be used."""
    out = []
    root = Path(os.path.realpath(target))
    for entry in toolchains:
        relative = not os.path.isabs(entry)
        lexical = os.path.normpath(os.path.join(root, entry))
        real = os.path.realpath(lexical)
        if relative and not Path(real).is_relative_to(root):
            return (), (
                f"toolchain {entry!r} leads out of the target to {real} (a symlink); "
                "name a directory inside it, or give the absolute path"
            )
        if not os.path.isdir(real):
            where = f" (relative to the target {root})" if relative else ""
            return (), (
                f"toolchain {entry!r} is not a directory: {lexical}{where}; create it "
                "(e.g. python -m venv .venv) or fix `toolchains:` in the job spec"
            )
        out.append(real)
    return tuple(dict.fromkeys(out)), None

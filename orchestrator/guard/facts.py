"""What the file system says about the paths a call names, gathered by the
caller before the decision (`orchestrator.tools.jail.path_facts`: an lstat
walk through the jail) and judged here without I/O: a path that leaves the
workspace, a FIFO, socket or device, a file with hard links outside the
workspace. Each is denied with its own rule before the tool runs, so the
ledger never records `allow` for a call the tool would refuse anyway."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["file", "dir", "fifo", "socket", "device", "other", "missing"]
Refusal = Literal["escape", "loop", "invalid", "special", "symlink", "hardlink", "link-escape"]

# The rule ids, and how to get past each (every refusal names both).
ESCAPE = "path-escapes-workspace"
SPECIAL = "path-special-file"
HARDLINK = "path-hardlink-outside"
LOOP = "path-symlink-loop"
INVALID = "path-invalid"
SYMLINK = "patch-symlink"
LINK_ESCAPE = "symlink-escape"  # also the shell changeset's rule (guard.changeset)
CWD = "shell-cwd-outside"


@dataclass(frozen=True)
class PathFact:
    """One path as the walk found it. `refusal` is set when the walk itself
    refused the path (`escape`, `loop` or `invalid`, with the jail's words in
    `detail`) or a patch would make it a symlink (`symlink`); otherwise `real` is where it leads inside the workspace and
    `kind` what is there. `links_outside`: a regular file whose link count
    the workspace does not account for (some name outside holds it)."""

    access: str  # read | write | cwd
    path: str
    kind: Kind = "missing"
    real: str | None = None
    refusal: Refusal | None = None
    detail: str = ""
    links_outside: bool = False


_REFUSAL_RULE = {
    "escape": ESCAPE,
    "loop": LOOP,
    "invalid": INVALID,
    "special": SPECIAL,
    "symlink": SYMLINK,
    "hardlink": HARDLINK,
    "link-escape": LINK_ESCAPE,
}


def fact_refusals(fact: PathFact) -> list[tuple[str, str]]:
    """(rule id, reason) for each thing `fact` shows the tool must not do."""
    shown = repr(fact.path)
    if fact.refusal == "symlink":
        return [
            (
                SYMLINK,
                f"{shown} {fact.detail}: a patch may add a new symlink, but never changes, "
                "deletes or writes through one. Do that with a shell step (`ln -sf`), whose "
                "changeset is judged",
            )
        ]
    if fact.refusal == "link-escape":
        return [
            (
                LINK_ESCAPE,
                f"the symlink {shown} {fact.detail}; a link may only lead to a place inside "
                "the workspace, and no policy rule allows another. Point it inside",
            )
        ]
    if fact.refusal == "special":
        return [(SPECIAL, _special(shown, fact.detail))]
    if fact.refusal == "hardlink":
        return [(HARDLINK, _hardlink(shown))]
    if fact.refusal is not None:
        escape = fact.access == "cwd" and fact.refusal == "escape"
        return [
            (
                CWD if escape else _REFUSAL_RULE[fact.refusal],
                f"{shown} {fact.detail}; tools stay inside the workspace and no policy rule "
                "allows leaving it. Name the file by its path inside the workspace (copy it "
                "in first if it lives elsewhere)",
            )
        ]
    out: list[tuple[str, str]] = []
    if fact.access == "cwd" and fact.kind not in ("dir", "missing"):
        out.append((CWD, f"cwd {shown} is not a directory; give a folder of the workspace"))
    if fact.kind in ("fifo", "socket", "device"):
        out.append((SPECIAL, _special(shown, f"is a {fact.kind}")))
    if fact.kind == "file" and fact.links_outside:
        out.append((HARDLINK, _hardlink(shown)))
    return out


def _hardlink(shown: str) -> str:
    return (
        f"{shown} is a hard link to a file that also lives outside the workspace (its "
        "link count is higher than the names the workspace holds), so reading or "
        "writing it reaches that file; no policy rule allows it. Replace it with a copy "
        "(`cp --remove-destination`) if its content belongs in the workspace"
    )


def _special(shown: str, what: str) -> str:
    return (
        f"{shown} {what}, not a regular file: reading it can block or reach outside the "
        "workspace, and no policy rule allows it. Use a regular file"
    )

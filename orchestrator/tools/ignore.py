"""Which entries a walk of a workspace skips, decided the way ripgrep does.

The walker (`paths.iter_files`) lists what `rg --files --no-ignore-parent
--no-ignore-global` run at the workspace root lists (`--hidden` and
`--no-ignore` map to the step's `hidden` and `no_ignore`), so `replace`,
`search` and `list` leave alone what a developer's tools leave alone: an
ignored `.venv/` or `node_modules/`, build output, hidden folders.

The rules, as ripgrep 13's `ignore` crate applies them:
  - every directory may hold `.rgignore`, `.ignore` and `.gitignore`; a
    directory holding `.git` also reads `.git/info/exclude`;
  - an entry is judged by its parent directory's rules: for each kind of file
    the nearest directory whose file names the entry decides (its last
    matching line: a `!` line re-includes), and the kinds rank `.rgignore`,
    then `.ignore`, then `.gitignore`, then `info/exclude`, whatever their depth;
  - `.gitignore` and `info/exclude` count only inside a git repository (a
    `.git` in the workspace or above it) and not across a nested repository's
    root; a workspace that is no git repository honours `.ignore` and
    `.rgignore` only, exactly as rg does there;
  - a name starting with `.` is hidden unless an ignore file re-includes it;
  - an ignored directory is never entered, so nothing below it comes back.

Two choices of ours, both documented in the job spec reference: ignore
files above the workspace and the user's global git excludes are not read
(a job's file list must not depend on where the workspace sits or on the
worker's home directory), and ignore files are read only when they are
regular files (a workspace cannot point them elsewhere with a symlink).

Glob syntax is pathspec's gitignore implementation; the line handling
around it (comments, trailing spaces, `!`, a trailing `/` for directories
only) follows the `ignore` crate, so a directory-only pattern and `dir/**`
judge each entry itself and never an entry through its parent.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

__all__ = ["IgnoreRules", "Level"]

# pathspec marks a match that ends at a directory separator (the pattern named
# a parent of the path) with this group; such a match is about the parent.
_DIR_MARK = "ps_d"
_MAX_IGNORE_BYTES = 1 << 20  # a bigger ignore file is read up to here
_EVERYTHING = re.compile("")


@dataclass(frozen=True)
class _Line:
    regex: re.Pattern[str]
    ignore: bool  # False: a `!` line, which re-includes
    dir_only: bool


@dataclass(frozen=True)
class _File:
    """One ignore file's lines, matched against paths relative to `base`."""

    base: str  # its directory relative to the workspace, "" or "a/b/"
    lines: tuple[_Line, ...]

    def decide(self, rel: str, is_dir: bool) -> bool | None:
        """True: ignored, False: re-included, None: no line names the entry."""
        path = rel[len(self.base) :]
        for line in reversed(self.lines):
            if line.dir_only and not is_dir:
                continue
            m = line.regex.match(path)
            if m is not None and (_DIR_MARK not in line.regex.groupindex or m[_DIR_MARK] is None):
                return line.ignore
        return None


def _parse(text: str, base: str) -> _File:
    lines = []
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.endswith("\\ "):
            raw = raw.rstrip()
        ignore = True
        if raw.startswith("!"):
            ignore, raw = False, raw[1:]
        if not raw and not ignore:
            # A lone `!`: the ignore crate reads an empty glob that matches
            # every entry, so it re-includes everything (hidden names too).
            lines.append(_Line(_EVERYTHING, False, False))
            continue
        dir_only = raw.endswith("/")
        if dir_only:
            raw = raw[:-1]
        if not raw:
            continue
        if raw.startswith(("#", "!")):
            raw = "\\" + raw  # literal now: pathspec would read a comment or a negation
        try:
            pattern = GitIgnoreSpecPattern(raw)
        except ValueError:
            continue  # rg skips a line it cannot read as a glob
        if pattern.regex is not None:
            lines.append(_Line(pattern.regex, ignore, dir_only))
    return _File(base, tuple(lines))


@dataclass(frozen=True)
class Level:
    """The rules in force inside one directory: its own files and its parent's."""

    rel: str  # "" for the workspace root, else "a/b/"
    parent: Level | None
    files: tuple[_File | None, _File | None, _File | None, _File | None]
    has_git: bool
    any_git: bool  # a repository here or above: .gitignore files count


class IgnoreRules:
    """The walk's filter for one workspace. `hidden` and `no_ignore` are rg's
    `--hidden` and `--no-ignore`."""

    def __init__(self, root: Path, *, hidden: bool = False, no_ignore: bool = False) -> None:
        self.hidden = hidden
        self.no_ignore = no_ignore
        # rg looks for a repository above the search root even when it reads
        # no ignore file there (`--no-ignore-parent`). Plain strings here and
        # in `enter`: every step that walks a workspace runs them, and
        # pathlib's objects cost more than the system calls.
        self._base = str(root).rstrip("/")  # "" for the file system's root
        self._git_above = not no_ignore and _git_in_parents(str(root))

    def top(self, rel: str = "") -> Level:
        """The level of directory `rel` ("" or "a/b/"), its ancestors read first."""
        level = self.enter(None, "")
        parts = [p for p in rel.split("/") if p]
        for i in range(len(parts)):
            level = self.enter(level, "/".join(parts[: i + 1]) + "/")
        return level

    def enter(self, parent: Level | None, rel: str) -> Level:
        """The level of directory `rel` below `parent`: reads its ignore files."""
        if self.no_ignore:
            return Level(rel, parent, (None, None, None, None), False, False)
        here = f"{self._base}/{rel}" if rel else f"{self._base}/"
        has_git = os.path.exists(here + ".git")
        files = (
            _read(here + ".rgignore", rel),
            _read(here + ".ignore", rel),
            _read(here + ".gitignore", rel),
            _read(_git_dir(Path(here)) / "info" / "exclude", rel) if has_git else None,
        )
        any_git = has_git or self._git_above or (parent is not None and parent.any_git)
        return Level(rel, parent, files, has_git, any_git)

    def skips(self, level: Level, rel: str, name: str, is_dir: bool) -> bool:
        """Whether the entry `rel` (named `name`) in directory `level` is left out."""
        verdict = None if self.no_ignore else _decide(level, rel, is_dir)
        if verdict is not None:
            return verdict
        return not self.hidden and name.startswith(".")


def _decide(level: Level, rel: str, is_dir: bool) -> bool | None:
    """The ignore files' verdict on an entry: the first kind with a verdict wins,
    within a kind the nearest directory's file."""
    found: list[bool | None] = [None, None, None, None]
    saw_git = False
    node: Level | None = level
    while node is not None:
        for kind, f in enumerate(node.files):
            if f is None or found[kind] is not None:
                continue
            if kind >= 2 and (saw_git or not level.any_git):
                continue  # git's files stop at the repository's root
            found[kind] = f.decide(rel, is_dir)
        saw_git = saw_git or node.has_git
        node = node.parent
    return next((v for v in found if v is not None), None)


def _git_in_parents(path: str) -> bool:
    """Whether a folder above `path` (absolute) holds a `.git`."""
    parent = os.path.dirname(path)
    while parent != path:
        if os.path.exists(os.path.join(parent, ".git")):
            return True
        path, parent = parent, os.path.dirname(parent)
    return False


def _read(path: Path | str, base: str) -> _File | None:
    """An ignore file's rules; None when absent, not a regular file, or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, _MAX_IGNORE_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    return _parse(data.decode("utf-8", "replace"), base)


def _git_dir(here: Path) -> Path:
    """The directory holding `info/exclude` for a repository rooted at `here`: its
    `.git` folder, or for a worktree (`.git` a file naming the git dir) the
    common dir, as rg resolves it."""
    dot_git = here / ".git"
    if dot_git.is_dir():
        return dot_git
    try:
        text = dot_git.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return dot_git
    if not text.startswith("gitdir:"):
        return dot_git
    git_dir = here / text[len("gitdir:") :].strip()
    try:
        common = (git_dir / "commondir").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return git_dir
    return git_dir / common


def ignored(root: Path, rels: Iterable[str]) -> set[str]:
    """Which of the workspace-relative file paths `rels` the workspace's ignore
    files hide (a path under an ignored folder included), as `rg --hidden`
    decides: hidden names are not ignored, `.gitignore`d ones are. What a
    shell command writes there (caches, build output, a venv) is not part
    of the project's patch, as `git diff` does not show it either."""
    rules = IgnoreRules(root, hidden=True)
    levels: dict[str, Level] = {"": rules.top()}
    out: set[str] = set()
    for rel in rels:
        parts = rel.split("/")
        level = levels[""]
        for i, name in enumerate(parts):
            is_dir = i < len(parts) - 1
            here = "/".join(parts[: i + 1])
            if rules.skips(level, here, name, is_dir):
                out.add(rel)
                break
            if is_dir:
                key = here + "/"
                if key not in levels:
                    levels[key] = rules.enter(level, key)
                level = levels[key]
    return out

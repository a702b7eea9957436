"""The workspace files the session policy denies reading, and how bubblewrap
hides them: `workspace_masks()` finds them (a walk kept per workspace and
re-read only where a directory changed), `mask_args()` mounts an empty
read-only file over each file (or, for a repository's `.git/config`, a copy
of its format part) and an empty read-only tmpfs over each directory.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from orchestrator.guard.globs import glob_matcher
from orchestrator.guard.links import census, unaccounted
from orchestrator.sandbox.watch import EVERYTHING, DirWatch

__all__ = [
    "Mask",
    "MaskRules",
    "Masker",
    "masker",
    "mask_args",
    "tidy_masks",
    "git_format_config",
    "workspace_masks",
    "empty_file",
]


def _under(path: str, top: str) -> bool:
    return PurePosixPath(path).is_relative_to(top)


class Mask(NamedTuple):
    """A workspace path (absolute) the policy denies reading: bubblewrap binds
    an empty read-only file over a file (or `source`, a file the worker made:
    the format part of a repository's `.git/config`), an empty read-only
    tmpfs over a directory."""

    path: str
    dir: bool = False
    source: str | None = None


# The path globs of each policy rule that denies reading, one tuple per rule
# (a rule's `!` globs exclude within that rule only).
MaskRules = tuple[tuple[str, ...], ...]


def mask_args(masks: Sequence[Mask], empty: str | None) -> list[str]:
    """Mounts hiding denied workspace paths, after the workspace's own bind: a
    file gets the empty file bound read-only over it (reads see nothing,
    writes, renames and hard links fail), a directory an empty tmpfs that is
    then made read-only. Parents come before what is below them."""
    masks = tidy_masks(masks)
    if any(not m.dir and m.source is None for m in masks) and empty is None:
        raise ValueError("masking files needs the empty file to bind over them")
    args: list[str] = []
    for m in masks:
        if m.dir:
            args += ["--perms", "0555", "--tmpfs", m.path, "--remount-ro", m.path]
        else:
            args += ["--ro-bind", str(m.source or empty), m.path]
    return args


# What of a repository's .git/config a masked copy keeps: how to read the
# repository (object format, worktree layout, line endings), nothing that
# names a remote, holds a credential, includes a file or runs a program.
GIT_FORMAT_KEYS = frozenset(
    {
        "core.repositoryformatversion",
        "core.bare",
        "core.worktree",
        "core.filemode",
        "core.symlinks",
        "core.ignorecase",
        "core.precomposeunicode",
        "core.logallrefupdates",
        "core.autocrlf",
        "core.eol",
        "core.safecrlf",
        "core.checkstat",
        "core.trustctime",
        "core.sparsecheckout",
        "core.sparsecheckoutcone",
        "core.splitindex",
        "core.untrackedcache",
    }
)


def git_format_config(listing: bytes) -> str:
    """The copy of a `.git/config` shown in its place, from `git config
    --null --list` of it: the GIT_FORMAT_KEYS and every `extensions.*` key
    (a sha256 or worktree-config repository read with an empty config is
    misread, and a write through it corrupts the index), nothing else."""
    sections: dict[str, list[str]] = {}
    for item in listing.decode("utf-8", "replace").split("\0"):
        key, newline, value = item.partition("\n")
        key = key.lower()
        section, _, name = key.partition(".")
        if key in GIT_FORMAT_KEYS or (section == "extensions" and name.isalnum()):
            quoted = (
                (value if newline else "true")
                .replace("\\", "\\\\")
                .replace('"', '\\"')
                .replace("\n", "\\n")
            )
            sections.setdefault(section, []).append(f'\t{name} = "{quoted}"\n')
    return "".join(f"[{sec}]\n" + "".join(lines) for sec, lines in sections.items())


def tidy_masks(masks: Sequence[Mask]) -> tuple[Mask, ...]:
    """Sorted (parents first), without duplicates or anything below a masked
    directory (it is hidden already, and nothing can be mounted there)."""
    out: list[Mask] = []
    dirs: list[str] = []
    for m in sorted(set(masks)):
        if any(_under(m.path, d) for d in dirs):
            continue
        out.append(m)
        if m.dir:
            dirs.append(m.path)
    return tuple(out)


class Masker:
    """Which workspace paths a command must not see, from the policy's denied
    read globs, made cheap enough to ask for every file of a big tree:

    - a rule's `P/**` (or `P/`) glob is asked once per directory: a directory
      matching P is masked whole and not walked (every path below it matches);
    - globs without `/` (and `**/NAME`, the same regex) only look at the file
      name, and only names passing a literal prefix/suffix test reach the regex;
    - other globs run on the whole path, but only for names matching their
      last component (a cheap gate), when they have one.

    Each answer is exactly `glob_matcher(rule, fold_case=True)(rel)` of some
    rule (files below a masked directory aside): what the policy's deny rules
    match (`PathRule.matches`), in any case, since `.ENV` is `.env` on a
    case-insensitive mount; rules with `!` exclusions are run whole."""

    def __init__(self, rules: MaskRules) -> None:
        dirs: list[str] = []
        names: list[str] = []
        gates: list[str] = []
        gated: list[str] = []
        whole: list[Callable[[str], bool]] = []
        for rule in rules:
            if any(g.startswith("!") for g in rule):
                whole.append(glob_matcher(tuple(rule), fold_case=True))
                continue
            for g in rule:
                g = g + "**" if g.endswith("/") else g
                last = g.rsplit("/", 1)[-1]
                prefix = g[:-3]
                if (
                    g.endswith("/**")
                    and prefix.strip("/")
                    and not prefix.endswith("**")
                    and "{" not in prefix
                ):
                    dirs.append(prefix if "/" in prefix else "/" + prefix)  # stays anchored
                elif g.startswith("**/") and "/" not in g[3:] and "**" not in g[3:]:
                    names.append(g[3:])
                elif "/" not in g and "**" not in g:
                    names.append(g)
                elif "/" in g and "**" not in last and not any(c in g for c in "{[\\"):
                    gates.append(last)
                    gated.append(g)
                else:
                    whole.append(glob_matcher((g,), fold_case=True))
        self._dir = glob_matcher(tuple(dirs), fold_case=True) if dirs else None
        self._name = _prefiltered(names, _folded(names)) if names else None
        self._gate = _prefiltered(gates, _folded(gates)) if gates else None
        self._gated = _folded(gated) if gated else None
        self._whole = tuple(whole)

    def whole_dir(self, rel: str) -> bool:
        """Whether every path below directory `rel` is denied."""
        return self._dir is not None and self._dir(rel)

    def file(self, rel: str) -> bool:
        """Whether file `rel` (outside the directories `whole_dir` masks) is denied."""
        name = rel.rpartition("/")[2]
        folded = name.lower() if name.isascii() else _fold(name)  # folded once, for both tests
        if self._name is not None and self._name(name, folded):
            return True
        if self._gate is not None and self._gate(name, folded) and self._gated(rel):  # type: ignore[misc]
            return True
        return bool(self._whole) and any(m(rel) for m in self._whole)


def _folded(globs: Sequence[str]) -> Callable[[str], bool]:
    return glob_matcher(tuple(globs), fold_case=True)


# The only non-ASCII characters Python's re.IGNORECASE equates with ASCII
# letters (İ and ı ~ i, ſ ~ s, K ~ k); `str.lower` leaves them be.
_TO_ASCII = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})


def _fold(name: str) -> str:
    """`name` as the prefilter compares it: lower case, with the characters
    re.IGNORECASE equates with ASCII letters made those letters."""
    return name.translate(_TO_ASCII).lower()


def _literals(glob: str) -> tuple[str, str, str] | None:
    """(literal prefix, literal suffix, longest literal run) every name matching
    the one-component `glob` must have; None when braces or escapes make that
    hard to say."""
    if any(c in glob for c in "{}\\"):
        return None
    runs, run, i = [], "", 0
    while i < len(glob):
        c = glob[i]
        if c in "*?[":
            runs.append(run)
            run = ""
            if c == "[":  # up to the last `]`: no need to parse classes exactly
                end = glob.rfind("]")
                if end <= i:
                    return None
                i = end
        else:
            run += c
        i += 1
    runs.append(run)
    return runs[0], runs[-1], max(runs, key=len)


def _prefiltered(globs: Sequence[str], full: Callable[[str], bool]) -> Callable[[str, str], bool]:
    """`full` (name globs), asked only for names that have some glob's literal
    prefix, suffix or middle: two C string calls reject almost every name.
    Compared folded (`_fold`), since `full` ignores case; a glob with a
    non-ASCII literal is always asked."""
    prefixes, suffixes, middles, always = [], [], [], False
    for g in globs:
        lit = _literals(g.lower())
        if lit is None or not any(lit) or not g.isascii():
            always = True
        elif lit[0]:
            prefixes.append(lit[0])
        elif lit[1]:
            suffixes.append(lit[1])
        else:
            middles.append(lit[2])
    if always:
        return lambda name, folded: full(name)
    pre, suf = tuple(prefixes), tuple(suffixes)

    def match(name: str, folded: str) -> bool:
        """`folded`: `name` as `_fold` makes it."""
        if not (
            folded.startswith(pre)
            or folded.endswith(suf)
            or middles
            and any(m in folded for m in middles)
        ):
            return False
        return full(name)

    return match


@lru_cache(maxsize=64)
def masker(rules: MaskRules) -> Masker:
    return Masker(rules)


_RACY_NS = 2_000_000_000  # a directory this recent may change again within one timestamp tick
_MASK_CACHE_SIZE = 32  # workspaces (with their rules) whose walk is kept


@dataclass(frozen=True)
class _Dir:
    """One directory's part of the walk, reused while the directory keeps its
    inode and mtime (any entry created, removed or renamed in it changes its
    mtime; chown and chmod do not)."""

    ino: int
    mtime_ns: int
    kept: bool  # False: changed too recently to trust; read again
    masks: tuple[Mask, ...]
    subdirs: tuple[str, ...]  # relative paths still to walk
    files: tuple[str, ...]  # names of its regular files (for hard links)
    dev: int = 0  # its file system: with `inos`, the keys of its files' names
    inos: tuple[int, ...] = ()  # each file's inode (d_ino), as `files`
    multi: tuple[str, ...] = ()  # its files with more than one link when read


_mask_cache: OrderedDict[tuple[str, MaskRules], dict[str, _Dir]] = OrderedDict()
_mask_lock = threading.Lock()


class _Stale(Exception):
    """A kept directory's listing no longer matches its subdirectories."""


def workspace_masks(root: Path, rules: MaskRules) -> tuple[Mask, ...]:
    """Every path under `root` that `rules` deny reading, for bubblewrap to
    hide. Walks the tree without following symlinks and without descending
    into `.git` (its own files, such as `.git/config`, are checked); masks a
    directory whole when everything below it is denied; for a symlink with a
    denied name, masks where it leads (when that is inside the workspace);
    masks other hard links of a denied file, and every file with a hard link
    the workspace does not hold (a link made into it to a file outside:
    `_outside_links`). A symlink with an allowed name pointing at a denied
    file needs nothing: the mount sits on the target.

    The walk is kept per workspace and rules, and a directory is read again
    only when its inode or mtime changed (or it changed within the last 2 s,
    when a second change could keep the same mtime), so a call on an
    unchanged tree costs one lstat per directory. Something can set a
    directory's mtime back (a checkout, a restore): then the
    subdirectories of the kept listing are checked to be the same inodes, and
    any difference (a folder renamed, replaced, gone) drops the kept walk."""
    top = str(root)
    key = (top, rules)
    match = masker(rules)
    with _mask_lock:
        old = _mask_cache.get(key, {})
        watch = _watcher()
        dirty = watch.changed(key) if old else EVERYTHING
        if dirty is EVERYTHING:
            watch.forget(key)  # watched again as this walk reads each folder
        settled = _settled.get(key)
        if dirty == set() and settled is not None and settled[0] is old:
            walked, masks = settled  # nothing reported, every folder kept and watched
        else:
            try:
                walked = _walk(top, old, match, (watch, key, dirty))
            except _Stale:
                watch.forget(key)
                walked = _walk(top, {}, match, (watch, key, EVERYTHING))
            masks = tidy_masks([m for d in walked.values() for m in d.masks])
            _settle(key, walked, masks, watch)
        _mask_cache[key] = walked
        _mask_cache.move_to_end(key)
        while len(_mask_cache) > _MASK_CACHE_SIZE:
            gone, _ = _mask_cache.popitem(last=False)
            _settled.pop(gone, None)
            _counted.pop(gone, None)
            watch.forget(gone)
    linked = _linked(masks)  # asked every call: a link can be made in another folder
    outside = _outside_links(top, key, walked)
    if linked or outside:
        masks = tidy_masks([*masks, *outside, *_other_links(top, walked, linked)])
    return tuple(_with_source(m) for m in masks)


# Per kept walk whose every folder is kept and watched: the walk and its
# masks, so a call on a tree inotify reported unchanged costs no per-folder
# step at all (the kept walk alone still visits each folder).
_settled: dict[Hashable, tuple[dict[str, _Dir], tuple[Mask, ...]]] = {}


def _settle(
    key: Hashable, walked: dict[str, _Dir], masks: tuple[Mask, ...], watch: DirWatch
) -> None:
    if watch.available(key) and all(d.kept and watch.watching(key, r) for r, d in walked.items()):
        _settled[key] = (walked, masks)
    else:
        _settled.pop(key, None)


_watches: list[DirWatch] = []


def _watcher() -> DirWatch:
    """This process's folder watch (a forked child makes its own)."""
    if not _watches or _watches[0].pid != os.getpid():
        _mask_cache.clear()  # a parent's walks were kept with the parent's watch
        _settled.clear()
        _counted.clear()
        _watches[:] = [DirWatch()]
    return _watches[0]


def _walk(
    top: str,
    old: Mapping[str, _Dir],
    match: Masker,
    watched: tuple[DirWatch, Hashable, set[str] | None] | None = None,
) -> dict[str, _Dir]:
    """The walk, reusing `old`'s folders: without a watch (or when it says
    EVERYTHING), each one whose inode and mtime are unchanged; with one,
    each watched folder it did not report changed, without even an lstat."""
    now = time.time_ns()
    walked: dict[str, _Dir] = {}
    stack: list[tuple[str, bool]] = [("", False)]  # (path, listed by a kept parent)
    watch, key, dirty = watched or (None, None, EVERYTHING)
    while stack:
        rel, vouched = stack.pop()
        before = old.get(rel)
        if (
            dirty is not EVERYTHING
            and before is not None
            and before.kept
            and rel not in dirty
            and watch is not None
            and watch.watching(key, rel)
        ):
            walked[rel] = before
            stack.extend((sub, True) for sub in before.subdirs)
            continue
        path = os.path.join(top, rel) if rel else top
        if watch is not None:
            watch.add(key, rel, path)  # before the lstat and the listing: no change missed
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            if vouched:
                raise _Stale(rel)
            continue  # gone since its parent was read
        if vouched and (before is None or before.ino != st.st_ino):
            raise _Stale(rel)
        keep = (
            before is not None
            and before.kept
            and (dirty is EVERYTHING or rel not in dirty)  # reported: its mtime may lie
            and (before.ino, before.mtime_ns) == (st.st_ino, st.st_mtime_ns)
        )
        d = before if keep and before is not None else _read_dir(top, rel, st, match, now)
        walked[rel] = d
        stack.extend((sub, keep) for sub in d.subdirs)
    return walked


def _read_dir(top: str, rel: str, st: os.stat_result, match: Masker, now: int) -> _Dir:
    prefix = rel + "/" if rel else ""
    in_git = rel.rpartition("/")[2].lower() == ".git"  # the repository: its own files only
    masks: list[Mask] = []
    subdirs: list[str] = []
    files: list[str] = []
    inos: list[int] = []
    multi: list[str] = []
    cacheable = st.st_mtime_ns < now - _RACY_NS
    try:
        entries = list(os.scandir(os.path.join(top, rel) if rel else top))
    except OSError:
        entries = []
        cacheable = False
    for e in entries:
        r = prefix + e.name
        if e.is_dir(follow_symlinks=False):
            if match.whole_dir(r):
                masks.append(Mask(e.path, True))
            elif not in_git:
                subdirs.append(r)
        elif e.is_file(follow_symlinks=False):
            files.append(e.name)
            inos.append(e.inode())
            if match.file(r):
                masks.append(Mask(e.path))
            try:
                if e.stat(follow_symlinks=False).st_nlink > 1:
                    multi.append(e.name)
            except OSError:  # gone meanwhile: its folder is reported
                pass
        elif e.is_symlink() and (match.file(r) or match.whole_dir(r)):
            cacheable = False  # where it leads can change without this folder
            target = _link_target(top, e.path)
            if target is not None:
                masks.append(target)
    return _Dir(
        st.st_ino,
        st.st_mtime_ns,
        cacheable,
        tuple(masks),
        tuple(subdirs),
        tuple(files),
        st.st_dev,
        tuple(inos),
        tuple(multi),
    )


def _link_target(top: str, link: str) -> Mask | None:
    """The mask for where a denied-named symlink leads, when that is a file or
    directory inside the workspace (outside it, the system's permissions
    decide, as for every other file there)."""
    try:
        real = os.path.realpath(link, strict=True)
        st = os.stat(real)
    except (OSError, RuntimeError):
        return None
    if not _under(real, top) or real == top:
        return None
    if stat.S_ISDIR(st.st_mode):
        return Mask(real, True)
    return Mask(real) if stat.S_ISREG(st.st_mode) else None


def _linked(masks: Sequence[Mask]) -> set[tuple[int, int]]:
    """(device, inode) of the masked files that have other hard links."""
    out = set()
    for m in masks:
        if not m.dir:
            with contextlib.suppress(OSError):
                st = os.lstat(m.path)
                if st.st_nlink > 1:
                    out.add((st.st_dev, st.st_ino))
    return out


def _other_links(top: str, walked: Mapping[str, _Dir], linked: set[tuple[int, int]]) -> list[Mask]:
    """Files that are hard links of a masked file under another name: the
    rare case, so it may stat every file."""
    out = []
    for rel, d in walked.items():
        for name in d.files:
            path = os.path.join(top, rel, name) if rel else os.path.join(top, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) in linked:
                    out.append(Mask(path))
    return out


Key = tuple[int, int]  # (device, inode)


@dataclass
class _MultiLinked:
    """A kept walk's files with more than one link when their folder was
    read, and how many names the workspace holds for some files (`census` of
    every file's name, made when first needed)."""

    walked: dict[str, _Dir]
    paths: tuple[str, ...]
    counted: frozenset[Key] = frozenset()
    counts: Mapping[Key, int] = field(default_factory=dict)


_counted: dict[Hashable, _MultiLinked] = {}


def _multi_linked(top: str, key: Hashable, walked: dict[str, _Dir]) -> _MultiLinked:
    """The walk's `_MultiLinked`, kept while the walk is (one step per folder
    only when it was read again)."""
    with _mask_lock:
        kept = _counted.get(key)
    if kept is not None and kept.walked is walked:
        return kept
    paths = tuple(
        os.path.join(top, rel, name) if rel else os.path.join(top, name)
        for rel, d in walked.items()
        for name in d.multi
    )
    kept = _MultiLinked(walked, paths)
    with _mask_lock:
        _counted[key] = kept
    return kept


def _outside_links(top: str, key: Hashable, walked: dict[str, _Dir]) -> list[Mask]:
    """Every file with more hard links than the workspace holds: one name is
    outside it, so what it shows is a file outside. Such a name can only
    come in by an entry made in a workspace folder (which the walk then reads
    again), but its link count can change without one, so the few files with
    more than one link are looked at again each call. Names the workspace
    holds are counted among these first (the usual case: `cp -l`), and only
    when that falls short among every file's name (once per kept walk)."""
    kept = _multi_linked(top, key, walked)
    links: dict[Key, int] = {}
    paths: dict[Key, list[str]] = {}
    for path in kept.paths:
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                k = (st.st_dev, st.st_ino)
                links[k] = st.st_nlink
                paths.setdefault(k, []).append(path)
    short = unaccounted(links, {k: len(p) for k, p in paths.items()})
    if not short:
        return []
    if not short <= kept.counted:
        wanted = frozenset(links)
        names = ((d.dev, ino) for d in walked.values() for ino in d.inos)
        kept.counts, kept.counted = census(names, only=wanted), wanted
    return [
        Mask(p) for k in unaccounted({k: links[k] for k in short}, kept.counts) for p in paths[k]
    ]


_private: str | None = None
_git_copies: dict[tuple[int, int, int, int], str] = {}


def _private_dir() -> str:
    """A folder only the worker may enter, for the files bound over masked
    ones: made once per process (removed at exit), again if it was removed."""
    global _private
    if _private is None or not os.path.isdir(_private):
        _private = tempfile.mkdtemp(prefix="orch-sandbox-masks-")
        atexit.register(shutil.rmtree, _private, True)
    return _private


def _read_only_file(name: str, data: bytes) -> str:
    """`name` in the private folder with `data`, mode 0444, the worker's own;
    made again when missing or changed."""
    path = os.path.join(_private_dir(), name)
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if (
            stat.S_ISREG(st.st_mode)
            and st.st_size == len(data)
            and st.st_uid == os.geteuid()
            and stat.S_IMODE(st.st_mode) == 0o444
        ):
            return path
    tmp = f"{path}.{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o444)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def empty_file() -> str:
    """The empty, read-only file bubblewrap binds over masked files."""
    with _mask_lock:
        return _read_only_file("empty", b"")


def _git_config_copy(path: str) -> str | None:
    """The file shown instead of the repository config at `path`: its format
    part (`git_format_config`), kept while the config keeps its inode, mtime
    and size. None (show it empty) when git cannot read it or nothing is kept."""
    git = shutil.which("git")
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if git is None or not stat.S_ISREG(st.st_mode):
        return None
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    with _mask_lock:
        known = _git_copies.get(key)
        if known == "":
            return None  # git could not read it, or nothing is kept: asked once
        if known is not None and os.path.isfile(known):
            return known
    try:  # parsing only: --file reads no includes, runs nothing
        out = subprocess.run(
            [git, "config", "--file", path, "--null", "--list"],
            capture_output=True,
            timeout=5,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.defpath, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = git_format_config(out.stdout) if out.returncode == 0 else ""
    if not text:
        with _mask_lock:
            _git_copies[key] = ""
        return None
    data = text.encode()
    with _mask_lock:
        copy = _read_only_file(f"gitconfig-{hashlib.sha256(data).hexdigest()[:24]}", data)
        _git_copies[key] = copy
    return copy


def _with_source(m: Mask) -> Mask:
    parent, _, name = m.path.rpartition("/")
    if m.dir or name.lower() != "config" or not parent.lower().endswith("/.git"):
        return m
    return m._replace(source=_git_config_copy(m.path))

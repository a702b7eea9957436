"""File edits: planning writes and patches, applying them all-or-nothing, and
rendering an edit as a git-style diff.

Planning only reads, so the runner can record the planned hashes first; then
`apply_edits` checks that nothing moved underneath, writes every new content
to a temporary file next to its target, and only then renames them into place.
A failure before the renames leaves the workspace as it was; a failure during
them puts back what was already renamed.

Secrets stay in the files: the model reads them masked, so a write or patch
goes through `secret_edits.keep_secrets` (lines written back as seen keep
their real values; a changed line that would put `***` over a secret is
refused), and a patch whose context was copied from the masked view is
applied to that view and then given the real values back.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.config.secrets import known_values
from orchestrator.errors import ToolError, ToolInputError
from orchestrator.run.steps import PatchStep, WriteStep
from orchestrator.tools.aside import Aside, forget, put_back, set_aside
from orchestrator.tools.base import (
    Content,
    FileEdit,
    Spilled,
    ToolResult,
    content_size,
    copy_content,
)
from orchestrator.tools.diffs import _QUOTE, unified_diff
from orchestrator.tools.durable import (
    SYNCFS,
    deferred_durability,
    make_durable,
    renames_durable,
    staged_durable,
)
from orchestrator.tools.jail import MAX_NAME_BYTES, Jail, Spot, patch_symlink
from orchestrator.tools.patch_links import exists, plan_link, stage_link
from orchestrator.tools.paths import iter_files, normalize_rel
from orchestrator.tools.search import cap_output
from orchestrator.tools.secret_edits import keep_secrets, masked_view

__all__ = [
    "plan_write",
    "plan_patch",
    "apply_edits",
    "deferred_durability",
    "make_durable",
    "unified_diff",
]


# --- write ---------------------------------------------------------------------------


def plan_write(
    workspace: Path, step: WriteStep, secrets: Sequence[str] | None = None
) -> list[FileEdit]:
    """One edit setting `step.path` to `step.content` (none if it already has
    it), the file's secrets kept (`secret_edits`; `secrets`: the known values,
    default those of the installed settings)."""
    rel = normalize_rel(step.path)
    before = _read(workspace, rel)
    if before is not None and not step.overwrite:
        raise ToolInputError(
            f"{rel} already exists and the write step has `overwrite: false`; "
            "nothing was written. Set `overwrite: true`, pick another path, "
            "or use a patch step to change the file."
        )
    after = step.content.encode("utf-8")
    after = _kept(rel, before, after, known_values() if secrets is None else secrets)
    return [] if before == after else [FileEdit(rel, before, after)]


def _kept(rel: str, before: bytes | None, after: bytes, secrets: Sequence[str]) -> bytes:
    """`after` with the secrets of `before` kept (text files only)."""
    if before is None or b"***" not in after:
        return after
    try:
        old = before.decode("utf-8")
    except UnicodeDecodeError:
        return after
    return keep_secrets(rel, old, after.decode("utf-8"), secrets).encode("utf-8")


def plan_delete(workspace: Path, rel: str) -> list[FileEdit]:
    """One edit removing `rel`, which must exist."""
    rel = normalize_rel(rel)
    before = _read(workspace, rel)
    if before is None:
        raise ToolInputError(
            f"{rel} does not exist, so there is nothing to delete; check "
            "the path (relative to the workspace)"
        )
    return [FileEdit(rel, before, None)]


def read_file(workspace: Path, rel: str, max_bytes: int) -> ToolResult:
    """A file's text, capped (head and tail kept, the cut marked)."""
    rel = normalize_rel(rel)
    data = _read(workspace, rel)
    if data is None:
        raise ToolInputError(f"{rel} does not exist in the workspace; check the path")
    if b"\0" in data:
        raise ToolInputError(f"{rel} is a binary file; read text files only")
    return ToolResult(output=cap_output(data, max_bytes), output_bytes=len(data), count=1)


def list_files(
    workspace: Path,
    rel: str,
    globs: Sequence[str],
    max_bytes: int,
    hidden: Callable[[str], bool] | None = None,
    *,
    show_hidden: bool = False,
    no_ignore: bool = False,
) -> ToolResult:
    """The files under `rel`, one path (relative to the workspace) a line: what
    `rg --files` lists there (`show_hidden`, `no_ignore`: rg's `--hidden`,
    `--no-ignore`). The workspace's ignore files apply to a subfolder too;
    naming an ignored folder lists it, as naming it to rg does."""
    rel = normalize_rel(rel) if rel not in ("", ".") else "."
    with Jail(workspace) as jail:
        spot = jail.resolve(rel)
    if spot.st is None or not stat.S_ISDIR(spot.st.st_mode):
        raise ToolInputError(f"{rel} is not a folder in the workspace")
    prefix = "" if rel == "." else rel.rstrip("/") + "/"
    real = "" if spot.rel == "." else spot.rel + "/"  # what policy judges, through symlinks
    names = [
        prefix + f
        for f in iter_files(
            jail.root,
            globs,
            (lambda r: hidden(prefix + r) or hidden(real + r)) if hidden else None,
            under=real,
            show_hidden=show_hidden,
            no_ignore=no_ignore,
        )
    ]
    text = "".join(n + "\n" for n in names).encode()
    return ToolResult(output=cap_output(text, max_bytes), output_bytes=len(text), count=len(names))


def _read(workspace: Path, rel: str) -> bytes | None:
    """A workspace file's bytes, or None if it does not exist."""
    with Jail(workspace) as jail:
        return jail.read(rel)


# --- apply ---------------------------------------------------------------------------


def apply_edits(workspace: Path, edits: Sequence[FileEdit]) -> int:
    """Make every edit or none; returns the number of bytes written. Refuses
    (ToolInputError) if any file no longer has its planned `before` content.
    Every file is reached through the jail's directory descriptors.

    Durable when it returns (the new contents and the renames), unless called
    inside `deferred_durability()`: then the renames are durable only once the
    caller has called `make_durable` on what it collected."""
    with Jail(workspace) as jail:
        return _apply(jail, edits)


def _to_change(jail: Jail, edits: Sequence[FileEdit]) -> list[tuple[FileEdit, Spot]]:
    """The edits that change a file, with their spots; refuses duplicates and stale plans."""
    targets: list[tuple[FileEdit, Spot]] = []
    seen: dict[tuple[int, int, str], str] = {}
    for edit in edits:
        spot = jail.resolve(edit.path)
        parent = os.fstat(spot.dirfd) if spot.dirfd is not None else None
        key = (parent.st_dev, parent.st_ino, spot.name) if parent else (-1, -1, spot.rel)
        if key in seen:
            raise ToolInputError(
                f"edits for {seen[key]} and {edit.path} name the same file; plan one edit per file."
            )
        seen[key] = edit.path
        current = jail.digest_spot(spot, edit.path)
        if current != edit.before_hash:
            raise ToolInputError(
                f"{edit.path} changed since planned (expected {_short(edit.before_hash)}, "
                f"found {_short(current)}); nothing was written. Plan the "
                "step again against the current files."
            )
        if edit.before != edit.after:
            targets.append((edit, spot))
    return targets


def _apply(jail: Jail, edits: Sequence[FileEdit]) -> int:
    targets = _to_change(jail, edits)
    staged: list[tuple[str, Spot, FileEdit]] = []  # (temp name, target, edit)
    whole_fs = SYNCFS is not None  # else an fsync per staged file and per folder
    made_dirs: list[tuple[int, str]] = []

    def undo_staging() -> None:
        for tmp, spot, _ in staged:
            _unlink_quietly(spot.dirfd, tmp)
        for dirfd, name in reversed(made_dirs):
            _rmdir_quietly(dirfd, name)

    try:
        for i, (edit, spot) in enumerate(targets):
            if edit.after is not None:
                if spot.dirfd is None:  # a new file in a new folder
                    spot = jail.resolve(edit.path, make_parents=made_dirs)
                    targets[i] = (edit, spot)
                if spot.dirfd is None:  # never let dir_fd=None mean "the worker's cwd"
                    raise ToolError(
                        f"the folder of {edit.path} changed while it was being "
                        "written; nothing was changed. Run the step again."
                    )
                sync = whole_fs is False  # a link is durable with its folder, after the rename
                tmp = (
                    stage_link(spot, edit.after)
                    if edit.link
                    else _stage(spot, edit.after, fsync=sync)
                )
                staged.append((tmp, spot, edit))
        whole_fs = staged_durable(staged, whole_fs)
    except OSError as err:
        undo_staging()
        raise ToolError(
            f"could not stage the new content of {err.filename or edit.path}: "
            f"{err.strerror}; nothing was changed. Fix the cause (disk space, "
            "permissions) and run the step again."
        ) from err
    except BaseException:
        undo_staging()
        raise

    done: list[tuple[Spot, FileEdit]] = []
    try:
        aside = set_aside(targets)
    except OSError as err:
        undo_staging()
        raise ToolError(
            f"could not keep the old content of {err.filename or 'a file'} while applying: "
            f"{err.strerror}; nothing was changed. Fix the cause and run the step again."
        ) from err
    try:
        for tmp, spot, edit in staged:
            os.replace(tmp, spot.name, src_dir_fd=spot.dirfd, dst_dir_fd=spot.dirfd)
            done.append((spot, edit))
        for edit, spot in targets:
            if edit.after is None and spot.dirfd is not None:
                os.unlink(spot.name, dir_fd=spot.dirfd)
                done.append((spot, edit))
    except OSError as err:
        _restore(done, aside)
        forget(aside)
        undo_staging()
        raise ToolError(
            f"applying the edits failed at {edit.path}: {err.strerror}; the files "
            "already changed were put back. Fix the cause and run the step "
            "again."
        ) from err
    for edit, spot in targets:
        if edit.after is None:  # like git: a directory emptied by deletions goes too
            for dirfd, name in reversed(spot.chain):
                if not _rmdir_quietly(dirfd, name):
                    break
    renames_durable(jail, done, whole_fs)
    forget(aside)
    return sum(content_size(e.after) for e, _ in targets if e.after is not None)


def _stage(spot: Spot, data: Content, *, fsync: bool = True) -> str:
    """Write `data` (a `Spilled` file: copied in chunks) to a fresh temp file
    beside the target (same mode), fsynced unless the caller syncs the file
    system; returns its name in the target's directory."""
    if isinstance(data, Spilled) and data.path is None:
        raise ToolError(f"the content of {spot.rel} is not held; it cannot be written back")
    tmp = f".{spot.name}.{secrets.token_hex(6)}.tmp"[-MAX_NAME_BYTES:]
    mode = stat.S_IMODE(spot.st.st_mode) if spot.st is not None else None
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o666,
        dir_fd=spot.dirfd,
    )
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, Spilled):
                copy_content(str(data.path), fh.fileno(), data.sha256)
            else:
                fh.write(data)
            fh.flush()
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            if fsync:
                os.fsync(fh.fileno())
    except BaseException:
        _unlink_quietly(spot.dirfd, tmp)
        raise
    return tmp


def _restore(done: list[tuple[Spot, FileEdit]], aside: Aside) -> None:
    for spot, edit in reversed(done):
        try:
            if put_back(aside, edit, spot):
                continue
            if edit.before is None:
                _unlink_quietly(spot.dirfd, spot.name)
            elif not (isinstance(edit.before, Spilled) and edit.before.path is None):
                os.replace(
                    _stage(spot, edit.before),
                    spot.name,
                    src_dir_fd=spot.dirfd,
                    dst_dir_fd=spot.dirfd,
                )
        except OSError:
            pass  # best effort: the original error is the one to report


def _unlink_quietly(dirfd: int | None, name: str) -> None:
    if dirfd is None:  # dir_fd=None would mean the worker's cwd
        return
    try:
        os.unlink(name, dir_fd=dirfd)
    except OSError:
        pass


def _rmdir_quietly(dirfd: int, name: str) -> bool:
    try:
        os.rmdir(name, dir_fd=dirfd)
        return True
    except OSError:
        return False


def _short(digest: str | None) -> str:
    return "no file" if digest is None else f"sha256 {digest[:12]}"


def _git_unquote(s: str) -> str:
    if not (len(s) >= 2 and s.startswith('"') and s.endswith('"')):
        return s
    raw = bytearray()
    body = s[1:-1]
    rev = {v[1]: k for k, v in _QUOTE.items()}
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in "01234567" and re.fullmatch(r"[0-7]{3}", body[i + 1 : i + 4]):
                raw.append(int(body[i + 1 : i + 4], 8))
                i += 4
                continue
            raw += rev.get(nxt, nxt).encode("utf-8", "surrogateescape")
            i += 2
            continue
        raw += c.encode("utf-8", "surrogateescape")
        i += 1
    return os.fsdecode(bytes(raw))


# --- patch in ------------------------------------------------------------------------


@dataclass
class _Hunk:
    header: str
    old_start: int
    new_start: int
    old: list[bytes] = field(default_factory=list)
    new: list[bytes] = field(default_factory=list)


@dataclass
class _FilePatch:
    git_old: str | None = None  # paths from `diff --git` (still prefixed)
    git_new: str | None = None
    old: str | None = None  # from ---/+++, None for /dev/null
    new: str | None = None
    rename_from: str | None = None  # bare paths from `rename from`/`rename to`
    rename_to: str | None = None
    created: bool = False
    deleted: bool = False
    binary: bool = False
    symlink: bool = False  # git's mode 120000: the content is a link target
    has_headers: bool = False
    hunks: list[_Hunk] = field(default_factory=list)


_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def plan_patch(
    workspace: Path, step: PatchStep, secrets: Sequence[str] | None = None
) -> list[FileEdit]:
    """The edits a unified diff makes, computed in memory. Every hunk must match
    exactly (it may sit at an offset from its stated line), in the file or in
    its masked view (what the model read); otherwise nothing is planned and
    ToolInputError names the file and hunk."""
    known = known_values() if secrets is None else secrets
    patches = _parse(step.diff)
    if not patches:
        raise ToolInputError(
            "the patch contains no file diffs (no `diff --git`, `---`/`+++` "
            "or `@@` lines); give a unified diff, e.g. the output of "
            "`git diff`."
        )
    original: dict[str, bytes | None] = {}
    state: dict[str, bytes | None] = {}
    links: dict[str, FileEdit] = {}  # new symlinks (mode 120000), by path

    def load(rel: str) -> bytes | None:
        if rel not in state:
            original[rel] = state[rel] = _read(workspace, rel)
        return state[rel]

    for fp in patches:
        src, dst = _paths(fp)
        label = dst or src or "?"
        if fp.symlink and src is None and dst is not None and not fp.binary:
            if load(dst) is not None or exists(workspace, dst):
                raise ToolInputError(
                    f"the patch creates the symlink {dst}, but something exists there; "
                    "remove it first."
                )
            edit = plan_link(workspace, dst, _apply_hunks(label, b"", fp.hunks))
            state[dst] = edit.after
            links[dst] = edit
            continue
        if fp.symlink:
            raise patch_symlink(label)
        if fp.binary:
            raise ToolInputError(
                f"the patch changes {label} as a binary file; binary patches "
                "cannot be applied here. Use a write step for that file."
            )
        base = b"" if src is None else load(src)
        if base is None:
            raise ToolInputError(
                f"the patch changes {src}, which does not exist in the "
                "workspace; check the path (relative to the target)."
            )
        if dst is not None and dst != src and load(dst) is not None:
            verb = "creates" if src is None else f"renames {src} to"
            raise ToolInputError(
                f"the patch {verb} {dst}, which already exists; patch the "
                "existing file instead, or remove it first."
            )
        result = _patched(label, base, fp.hunks, known)
        if dst is None and result:
            raise ToolInputError(
                f"the patch deletes {src}, but the file has content the "
                "patch does not remove; regenerate the diff."
            )
        if src is not None and src != dst:
            state[src] = None
        if dst is not None:
            state[dst] = result
    return [
        links.get(rel) or FileEdit(rel, original[rel], state[rel])
        for rel in state
        if state[rel] != original[rel]
    ]


def _patched(label: str, base: bytes, hunks: list[_Hunk], secrets: Sequence[str]) -> bytes:
    """`base` with `hunks` applied; if they only fit the masked view of it (the
    model copied context lines it saw masked), applied there and the secrets
    put back."""
    try:
        result = _apply_hunks(label, base, hunks)
    except ToolInputError:
        try:
            text = base.decode("utf-8")
        except UnicodeDecodeError:
            raise
        view = masked_view(text, secrets)
        if view is None:
            raise
        result = _apply_hunks(label, view.encode("utf-8"), hunks)
    return _kept(label, base, result, secrets)


def _paths(fp: _FilePatch) -> tuple[str | None, str | None]:
    """(source, destination) relative paths; None where the file does not exist
    (source of a creation, destination of a deletion). `a/` and `b/` prefixes
    are dropped when both sides carry them, as git writes them."""
    if fp.has_headers:
        old, new = fp.old, fp.new
        fp.created = fp.created or old is None
        fp.deleted = fp.deleted or new is None
    else:  # header-only git diff: empty file, rename
        old, new = fp.git_old, fp.git_new
    if (old is None or old.startswith("a/")) and (new is None or new.startswith("b/")):
        old, new = old and old[2:], new and new[2:]
    if fp.rename_from is not None and fp.rename_to is not None:
        old, new = fp.rename_from, fp.rename_to
    src = None if fp.created else old
    dst = None if fp.deleted else new
    if src is None and dst is None:
        raise ToolInputError("a file diff in the patch names no file (both sides /dev/null).")
    return (src and normalize_rel(src)), (dst and normalize_rel(dst))


def _parse(diff: str) -> list[_FilePatch]:
    lines = diff.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    patches: list[_FilePatch] = []
    cur: _FilePatch | None = None
    i = 0
    while i < len(lines):
        line = lines[i].rstrip("\r")
        if line.startswith("diff --git "):
            cur = _FilePatch()
            cur.git_old, cur.git_new = _git_header_paths(line[len("diff --git ") :])
            patches.append(cur)
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            if cur is None or cur.has_headers or cur.hunks:
                cur = _FilePatch()
                patches.append(cur)
            cur.old = _header_path(line[4:])
            cur.new = _header_path(lines[i + 1].rstrip("\r")[4:])
            cur.has_headers = True
            i += 1
        elif line.startswith("@@ "):
            if cur is None or not (cur.has_headers or cur.git_old):
                raise ToolInputError(
                    f"hunk {line!r} comes before any file header; a unified "
                    "diff needs `--- a/path` and `+++ b/path` lines first."
                )
            i = _parse_hunk(lines, i, cur)
            continue
        elif cur is not None and not cur.hunks:
            _extended_header(line, cur)
        i += 1
    return patches


def _extended_header(line: str, cur: _FilePatch) -> None:
    cur.symlink |= line.rstrip().endswith(" 120000")  # a mode or index line: a symlink
    if line.startswith("new file mode"):
        cur.created = True
    elif line.startswith("deleted file mode"):
        cur.deleted = True
    elif line.startswith("rename from "):
        cur.rename_from = _git_unquote(line[len("rename from ") :])
    elif line.startswith("rename to "):
        cur.rename_to = _git_unquote(line[len("rename to ") :])
    elif line.startswith("Binary files ") or line == "GIT binary patch":
        cur.binary = True


def _parse_hunk(lines: list[str], i: int, cur: _FilePatch) -> int:
    header = lines[i].rstrip("\r")
    m = _HUNK.match(header)
    if m is None:
        raise ToolInputError(f"malformed hunk header {header!r}; expected `@@ -l,s +l,s @@`.")
    old_left = int(m[2]) if m[2] is not None else 1
    new_left = int(m[4]) if m[4] is not None else 1
    hunk = _Hunk(header, int(m[1]), int(m[3]))
    cur.hunks.append(hunk)
    last = " "
    i += 1
    while old_left > 0 or new_left > 0 or (i < len(lines) and lines[i].startswith("\\")):
        if i >= len(lines):
            raise ToolInputError(
                f"hunk {header} ends early: {old_left} old and {new_left} new "
                "lines are missing (was the diff cut off or edited by hand?)."
            )
        line = lines[i]
        i += 1
        if line.startswith("\\"):  # "\ No newline at end of file": about the line before
            sides = {" ": (hunk.old, hunk.new), "-": (hunk.old,), "+": (hunk.new,)}[last]
            for side in sides:
                if side and side[-1].endswith(b"\n"):
                    side[-1] = side[-1][:-1]
            continue
        tag, text = (line[0], line[1:]) if line else (" ", "")
        data = text.encode("utf-8", "surrogateescape") + b"\n"
        if tag == " " and old_left > 0 and new_left > 0:
            hunk.old.append(data)
            hunk.new.append(data)
            old_left, new_left = old_left - 1, new_left - 1
        elif tag == "-" and old_left > 0:
            hunk.old.append(data)
            old_left -= 1
        elif tag == "+" and new_left > 0:
            hunk.new.append(data)
            new_left -= 1
        else:
            raise ToolInputError(
                f"hunk {header} has a line {line[:60]!r} that does not fit its "
                "line counts; fix the counts in the `@@` header or the lines."
            )
        last = tag
    if (
        i < len(lines)
        and lines[i][:1] in ("+", "-", " ")
        and not lines[i].startswith(("--- ", "+++ ", "-- "))
    ):
        raise ToolInputError(
            f"hunk {header} has more lines than its header counts "
            f"(next line: {lines[i][:60]!r}); fix the counts in the `@@` "
            "header."
        )
    return i


def _header_path(raw: str) -> str | None:
    """The path of a `---`/`+++` line: unquoted, timestamp dropped; None for /dev/null."""
    raw = raw.rstrip("\r")
    name = _git_unquote(raw) if raw.startswith('"') else raw.split("\t", 1)[0]
    return None if name == "/dev/null" else name


def _git_header_paths(rest: str) -> tuple[str | None, str | None]:
    """`a/x b/x` from a `diff --git` line (quoted or not; ambiguous names need ---/+++)."""
    if rest.startswith('"'):
        end = 1
        while end < len(rest) and rest[end] != '"':
            end += 2 if rest[end] == "\\" else 1
        return _git_unquote(rest[: end + 1]), _git_unquote(rest[end + 2 :])
    half = (len(rest) - 1) // 2
    if len(rest) % 2 == 1 and rest[half] == " " and rest[2:half] == rest[half + 3 :]:
        return rest[:half], rest[half + 1 :]
    first, _, second = rest.partition(" ")
    return first, second or None


def _split(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _apply_hunks(path: str, data: bytes, hunks: list[_Hunk]) -> bytes:
    lines = _split(data)
    out: list[bytes] = []
    pos = offset = 0
    for n, hunk in enumerate(hunks, 1):
        stated = hunk.old_start - 1 if hunk.old else hunk.old_start
        at = _find(lines, hunk.old, stated + offset, pos)
        if at is None:
            raise ToolInputError(_mismatch(path, hunk, n, len(hunks), lines, max(stated, pos)))
        offset = at - stated
        out += lines[pos:at]
        out += hunk.new
        pos = at + len(hunk.old)
    out += lines[pos:]
    return b"".join(out)


def _find(lines: list[bytes], old: list[bytes], want: int, lo: int) -> int | None:
    """The start nearest to `want` (not before `lo`) where `old` matches exactly."""
    hi = len(lines) - len(old)
    want = min(max(want, lo), max(hi, lo))
    for d in range(0, max(want - lo, hi - want) + 1):
        for at in (want + d, want - d) if d else (want,):
            if lo <= at <= hi and lines[at : at + len(old)] == old:
                return at
    return None


def _mismatch(path: str, hunk: _Hunk, n: int, total: int, lines: list[bytes], at: int) -> str:
    detail = ""
    for k, want in enumerate(hunk.old):
        have = lines[at + k] if at + k < len(lines) else None
        if have != want:
            found = "the end of the file" if have is None else repr(have.decode("utf-8", "replace"))
            detail = (
                f" At line {at + k + 1} the patch expects "
                f"{want.decode('utf-8', 'replace')!r} but the file has {found}."
            )
            break
    return (
        f"patch does not apply to {path}: hunk {n} of {total} ({hunk.header}) does not "
        f"match the file at its line or at any offset after the previous hunk.{detail} "
        "Nothing was changed; re-read the file and regenerate the diff."
    )

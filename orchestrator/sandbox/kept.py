"""A judged changeset kept on disk, keyed by its call, until it is applied.

A shell call's changeset is recorded (FileChanged, with the completion) and
only then applied. A worker that dies between the two would lose the effect
while the log says it happened, so the changeset is written here first:

    keep()   before the completion is appended (its own folder, written
             whole under a temporary name, then renamed: all or nothing)
    drop()   once it is applied, or was not recorded (a refusal, a stale
             append): renamed to `*.applied`, then removed
    held()   what a redelivery of a call whose completion is stored finds
             still kept: it applies that (`sandbox.apply` is idempotent)
    sweep()  removes what a dead worker left half written or half dropped

Layout: `<base>/<call>.<token>/manifest.json` (one entry per change, with
the sha256 of its bytes) and `blobs/<sha256>`. A content too big to hold
(`Spilled`) is hard-linked into `blobs/` from the changeset's spill folder
(copied in chunks across filesystems) and fsynced there, so the kept folder
has its own durable copy before the completion is appended; its manifest
entry is `{"sha256", "size", "held"}` (`held` false: a before side, only its
hash is needed). Several deliveries of one call
each keep their own folder (the token); the one whose append was stored
wins, the others drop theirs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import shutil
import signal
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from orchestrator.sandbox import aftercall
from orchestrator.sandbox.changeset import Change, Changeset, Kind, link_or_copy
from orchestrator.tools.base import Content, Spilled

__all__ = ["keep", "held", "load", "drop", "sweep", "default_base", "crash_point"]

_APPLIED = ".applied"
_TMP = ".tmp-"
# Tests only: a file named here makes the process kill itself (SIGKILL) once,
# right after the completion is stored and before the changeset is applied.
CRASH_VAR = "ORCH_TEST_KILL_BEFORE_APPLY"


def default_base(state_dir: Path | None) -> Path:
    """Where kept changesets live: under the state folder (it survives a
    worker's restart), or the temp folder for callers without settings."""
    top = Path(state_dir) if state_dir is not None else Path(tempfile.gettempdir())
    return top / "kept-changesets"


def _name(call_id: str) -> str:
    return call_id.replace("/", "~")


def keep(base: Path, call_id: str, changes: Changeset) -> Path:
    """Write `changes` under `base` for `call_id`, durably; returns its folder."""
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_hex(6)
    tmp = base / f"{_TMP}{os.getpid()}-{token}"
    (tmp / "blobs").mkdir(parents=True, mode=0o700)
    entries = []
    for c in changes.changes:
        entry = {k: v for k, v in asdict(c).items() if k not in ("before", "after")}
        entry["kind"] = str(c.kind)
        for side in ("before", "after"):
            data = getattr(c, side)
            entry[side] = None if data is None else _blob(tmp / "blobs", data)
        entries.append(entry)
    manifest = tmp / "manifest.json"
    with open(manifest, "wb") as f:
        f.write(json.dumps({"call_id": call_id, "changes": entries}).encode())
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp / "blobs")
    _fsync_dir(tmp)
    final = base / f"{_name(call_id)}.{token}"
    os.rename(tmp, final)
    _fsync_dir(base)
    return final


def _blob(folder: Path, data: Content) -> str | dict[str, Any]:
    if isinstance(data, Spilled):
        held = data.path is not None
        path = folder / data.sha256
        if held and not path.exists():
            link_or_copy(str(data.path), str(path))
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        return {"sha256": data.sha256, "size": data.size, "held": held}
    digest = hashlib.sha256(data).hexdigest()
    path = folder / digest
    if not path.exists():
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return digest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def held(base: Path, call_id: str) -> list[Path]:
    """The folders kept for `call_id` and not yet dropped."""
    prefix = _name(call_id) + "."
    with contextlib.suppress(FileNotFoundError):
        return sorted(
            Path(e.path)
            for e in os.scandir(base)
            if e.name.startswith(prefix)
            and not e.name.endswith(_APPLIED)
            and "." not in e.name[len(prefix) :]
        )
    return []


def load(folder: Path) -> Changeset:
    """The changeset a folder keeps."""
    doc = json.loads((folder / "manifest.json").read_bytes())
    out = []
    for entry in doc["changes"]:
        values = dict(entry)
        values["kind"] = Kind(values["kind"])
        for side in ("before", "after"):
            values[side] = _content(folder / "blobs", values[side])
        out.append(Change(**values))
    return Changeset(tuple(out))


def _content(blobs: Path, ref: str | dict[str, Any] | None) -> Content | None:
    if ref is None:
        return None
    if isinstance(ref, dict):
        path = str(blobs / ref["sha256"]) if ref["held"] else None
        return Spilled(ref["size"], ref["sha256"], path)
    return (blobs / ref).read_bytes()


def drop(folders: list[Path]) -> None:
    """Forget kept changesets: first renamed, here (a crash then leaves
    nothing a redelivery would apply again), then removed after the call
    (`aftercall`; what a crash leaves renamed, `sweep()` removes)."""
    for folder in folders:
        gone = folder.with_name(folder.name + _APPLIED)
        with contextlib.suppress(FileNotFoundError):
            os.rename(folder, gone)
        aftercall.later(functools.partial(shutil.rmtree, gone, ignore_errors=True))


def sweep(base: Path) -> int:
    """Remove what dead workers left: folders renamed as applied, and
    temporary folders of processes that are gone. Returns how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for e in os.scandir(base):
            stale = e.name.endswith(_APPLIED)
            if e.name.startswith(_TMP):
                pid = e.name[len(_TMP) :].split("-", 1)[0]
                stale = pid.isdigit() and not os.path.exists(f"/proc/{pid}")
            if stale:
                shutil.rmtree(e.path, ignore_errors=True)
                removed += 1
    return removed


def crash_point() -> None:
    """Die here, as a worker killed at this point would (tests only: inert
    unless CRASH_VAR names a file that exists; the file is removed first, so
    only one process dies)."""
    flag = os.environ.get(CRASH_VAR)
    if not flag:
        return
    try:
        os.unlink(flag)
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)

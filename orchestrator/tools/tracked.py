"""Which workspace files git tracks.

Two shell-call decisions hang on it: a delete of a tracked file asks, as
`rm` of one does, and a write below an ignored folder is left out of the
patch only when the file is not tracked (`git diff` shows a tracked file's
change whatever `.gitignore` says). So it fails closed: where git cannot
answer for a repository, every path counts as tracked.

git reads the index only (hooks and fsmonitor off, as everywhere the worker
runs git), with every directory trusted: a root worker on a user's
repository would otherwise get "dubious ownership" and no answer.
"""

from __future__ import annotations

import subprocess
from collections.abc import Collection
from pathlib import Path

from orchestrator.ops import logs
from orchestrator.sandbox.plan import GIT_ENV

__all__ = ["tracked"]

_log = logs.get_logger(__name__)
_CHUNK = 500  # paths per git run: far below any argument-size limit


def _env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", **GIT_ENV}  # GIT_ENV trusts every directory


def tracked(workspace: Path, paths: Collection[str]) -> frozenset[str]:
    """The members of `paths` (relative to `workspace`) that git tracks;
    none outside a repository, all of them where git cannot tell."""
    wanted = sorted(set(paths))
    found: set[str] = set()
    for i in range(0, len(wanted), _CHUNK):
        chunk = wanted[i : i + _CHUNK]
        try:
            done = subprocess.run(
                [
                    "git",
                    "--literal-pathspecs",
                    "-C",
                    str(workspace),
                    "ls-files",
                    "-z",
                    "--",
                    *chunk,
                ],
                capture_output=True,
                env=_env(),
                stdin=subprocess.DEVNULL,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            return _unknown(workspace, wanted, str(err))
        if done.returncode != 0:
            if b"not a git repository" in done.stderr:
                return frozenset()
            return _unknown(workspace, wanted, done.stderr.decode(errors="replace").strip())
        found.update(x.decode("utf-8", "surrogateescape") for x in done.stdout.split(b"\0") if x)
    return frozenset(found & set(wanted))


def _unknown(workspace: Path, paths: list[str], why: str) -> frozenset[str]:
    _log.warning(
        "git could not say which files it tracks; counting them all as tracked",
        workspace=str(workspace),
        error=why[:300],
    )
    return frozenset(paths)

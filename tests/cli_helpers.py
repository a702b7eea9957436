"""Running the real CLI and worker processes from tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def shape_env(
    tmp_path: Path, *, store_url: str | None = None, broker_url: str | None = None, **extra: str
) -> dict[str, str]:
    """Environment for one deployment shape; nothing leaks in from the caller's ORCH_*."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ORCH_")
        or k in ("ORCH_REQUIRE_SERVICES", "ORCH_TEST_PG_URL", "ORCH_TEST_REDIS_URL")
    }
    env["ORCH_STATE_DIR"] = str(tmp_path / "state")
    if store_url:
        env["ORCH_STORE_URL"] = store_url
    if broker_url:
        env["ORCH_BROKER_URL"] = broker_url
    env.update(extra)
    return env


def cli(
    env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", *args],
        env=env,
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_json(env: dict[str, str], *args: str, cwd: Path | None = None) -> Any:
    result = cli(env, *args, "--json", cwd=cwd)
    assert result.returncode in (0, 1, 3), result.stderr  # 3: refused or waiting
    return json.loads(result.stdout)


def state_store(env: dict[str, str]) -> Any:
    """The embedded store of a CLI deployment, opened with its key-encryption
    key, so sealed fields (events.sealing) read as plain text."""
    from events.keyring import SqlKeyRing
    from events.sealing import Sealer
    from events.store import open_store
    from orchestrator.audit import kek

    state = Path(env["ORCH_STATE_DIR"])
    url = f"sqlite:///{state / 'events.sqlite'}"
    return open_store(url, filters=[Sealer(SqlKeyRing(url, kek.load(state / kek.DEFAULT_NAME)))])


def with_env(needle: str) -> list[int]:
    """Live processes whose environment holds `needle` (VAR=value)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    if needle.encode() + b"\0" in f.read() + b"\0":
                        found.append(int(entry.name))
            except OSError:
                pass
    return found

"""After a rollback the store may be at a schema revision this release does not
know: `db status` exits non-zero and `db upgrade` says what to do, with no
traceback; a store behind this release makes `db status` exit 1."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.cli_helpers import cli, shape_env


def test_an_unknown_schema_revision_is_named_not_a_traceback(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite"
    env = shape_env(tmp_path, store_url=f"sqlite:///{db}")
    assert cli(env, "db", "upgrade").returncode == 0
    assert cli(env, "db", "status").returncode == 0

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00dfeed0099'")
    status = cli(env, "db", "status")
    assert status.returncode == 2, status
    upgrade = cli(env, "db", "upgrade")
    assert upgrade.returncode == 2, upgrade
    for result in (status, upgrade):
        text = " ".join((result.stdout + result.stderr).split())
        assert "Traceback" not in text
        assert "f00dfeed0099" in text and "roll forward" in text, text

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
    behind = cli(env, "db", "status")
    assert behind.returncode == 1, behind
    assert "db upgrade" in behind.stdout

"""Schema management through Alembic, and the start-up check the store runs.

The check runs on every store open (every CLI command that reads one), so it
needs no Alembic: it reads Alembic's version table with one query and
compares it with `HEAD`. Alembic itself (~90 ms to import) loads only to
migrate or to walk the scripts (`orchestrator db upgrade`, `doctor`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from events.db import display_url, store_errors
from events.errors import SchemaNotReady, UnknownSchemaRevision

if TYPE_CHECKING:
    from alembic.config import Config

# The newest revision under events/migrations/versions; a new migration bumps
# it (tests/test_store.py holds it equal to the head Alembic finds there).
HEAD = "0004"
VERSION_TABLE = "alembic_version"  # Alembic's default, which env.py keeps


def _config() -> Config:
    # Alembic is imported here, not at the top: opening a store never needs it.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "events:migrations")
    return cfg


def head_revision() -> str:
    """The head as Alembic finds it by walking the migration scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: sa.Engine) -> str | None:
    """The revision recorded in the database (None for an empty one): what
    Alembic's `MigrationContext.get_current_revision` reads, in one query."""
    with store_errors(str(engine.url)), engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        found = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(found) > 1:  # branches: this project keeps one line of migrations
        raise SchemaNotReady(display_url(str(engine.url)), ",".join(sorted(found)), HEAD)
    return found[0] if found else None


def known_revisions() -> set[str]:
    """Every revision the migrations here know (Alembic walks the scripts)."""
    from alembic.script import ScriptDirectory

    return {r.revision for r in ScriptDirectory.from_config(_config()).walk_revisions()}


def upgrade(engine: sa.Engine) -> tuple[str | None, str]:
    """Apply every pending migration; returns (before, after) revisions.
    A revision no migration here knows is refused with what to do (Alembic
    would end in "Can't locate revision")."""
    from alembic import command

    before = current_revision(engine)
    if before is not None and before not in known_revisions():
        raise UnknownSchemaRevision(display_url(str(engine.url)), before, head_revision())
    with store_errors(str(engine.url)), engine.begin() as conn:
        cfg = _config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return before, head_revision()


def check(engine: sa.Engine) -> None:
    """Refuse an unmigrated or newer-than-known schema, naming the command to run."""
    found = current_revision(engine)
    if found == HEAD:
        return
    if found is not None and found not in known_revisions():
        raise UnknownSchemaRevision(display_url(str(engine.url)), found, HEAD)
    raise SchemaNotReady(display_url(str(engine.url)), found, HEAD)

"""Schema management through Alembic, and the start-up check the store runs."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from events.db import display_url, store_errors
from events.errors import SchemaNotReady, UnknownSchemaRevision


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "events:migrations")
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: sa.Engine) -> str | None:
    with store_errors(str(engine.url)), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def known_revisions() -> set[str]:
    return {r.revision for r in ScriptDirectory.from_config(_config()).walk_revisions()}


def upgrade(engine: sa.Engine) -> tuple[str | None, str]:
    """Apply every pending migration; returns (before, after) revisions.
    A revision no migration here knows is refused with what to do (Alembic
    would end in "Can't locate revision")."""
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
    found, head = current_revision(engine), head_revision()
    if found is not None and found != head and found not in known_revisions():
        raise UnknownSchemaRevision(display_url(str(engine.url)), found, head)
    if found != head:
        raise SchemaNotReady(display_url(str(engine.url)), found, head)

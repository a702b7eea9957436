"""Drop the unique index on events.event_id: no query reads by it, and every
append paid for it (one more B-tree, one more page written and fsynced per
commit). Event ids are UUIDv7 (a millisecond clock and 74 random bits); what
stops a batch being stored twice is its idempotency key and UNIQUE(stream_id,
seq), which stay. The queries that read the events table and the index each
uses: docs/event-store-indexes.md.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The append-only triggers of 0001, which a SQLite table rebuild drops with the old table.
SQLITE_TRIGGERS = [
    """CREATE TRIGGER events_no_update BEFORE UPDATE ON events
       BEGIN SELECT RAISE(ABORT, 'events are append-only: UPDATE refused'); END""",
    """CREATE TRIGGER events_no_delete BEFORE DELETE ON events
       BEGIN SELECT RAISE(ABORT, 'events are append-only: DELETE refused'); END""",
]


def _event_id_unique(bind: sa.engine.Connection) -> str | None:
    for uc in sa.inspect(bind).get_unique_constraints("events"):
        if uc["column_names"] == ["event_id"]:
            return uc["name"]
    return None


def _events_0004() -> sa.Table:
    """The events table as this revision leaves it (0001 to 0003, less the unique event_id)."""
    position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    return sa.Table(
        "events",
        sa.MetaData(),
        sa.Column("position", position, primary_key=True, autoincrement=True),
        sa.Column("stream_id", sa.String(200), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("correlation_id", sa.String(200), nullable=False),
        sa.Column("idempotency_key", sa.String(300), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("stream_id", "seq", name="uq_events_stream_seq"),
        sa.Index("ix_events_correlation", "correlation_id", "position"),
        sa.Index("ix_events_idempotency", "stream_id", "idempotency_key"),
        sa.Index("ix_events_type_position", "type", "position"),
    )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        name = _event_id_unique(bind)
        if name is not None:
            op.drop_constraint(name, "events", type_="unique")
        return
    # SQLite cannot drop an inline UNIQUE: rebuild the table (a copy of every
    # row, in this migration's transaction; DROP TABLE fires no trigger).
    with op.batch_alter_table("events", copy_from=_events_0004(), recreate="always"):
        pass
    for ddl in SQLITE_TRIGGERS:
        op.execute(ddl)


def downgrade() -> None:
    raise NotImplementedError("the event store is append-only; restore from backup instead")

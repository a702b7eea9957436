"""Lighter indexes on events: every append wrote five B-trees besides the table.

- Drop the unique index on `event_id`: no query reads by it. Event ids are
  UUIDv7 (a millisecond clock and 74 random bits); what stops a batch being
  stored twice is its idempotency key and UNIQUE(stream_id, seq), which stay.
- Make `ix_events_type_position` partial: only the rare types `read_types`
  is asked for (`events.schema.INDEXED_TYPES`), so other appends skip it.

One B-tree insert less per event and two for most: fewer pages written and
fsynced per commit. Every query on the events table and the index it uses:
docs/event-store-indexes.md.

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
    """The events table as the rebuild leaves it: 0001 to 0003 less the unique
    event_id (the type index comes back partial after it)."""
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
    )


# The clause of events.schema.INDEXED_TYPES_SQL as of this revision (a later
# change of that list is a migration of its own).
TYPES = "type IN ('ConfirmationRequested', 'ConfirmationGranted', 'ConfirmationDenied', 'JobSubmitted', 'JobCompleted')"


def upgrade() -> None:
    bind = op.get_bind()
    op.drop_index("ix_events_type_position", table_name="events")
    if bind.dialect.name != "sqlite":
        name = _event_id_unique(bind)
        if name is not None:
            op.drop_constraint(name, "events", type_="unique")
    else:
        _rebuild_sqlite()
    # A plain CREATE INDEX, as in 0002: it blocks appends while it reads the table.
    op.create_index(
        "ix_events_type_position",
        "events",
        ["type", "position"],
        sqlite_where=sa.text(TYPES),
        postgresql_where=sa.text(TYPES),
    )


def _rebuild_sqlite() -> None:
    """SQLite cannot drop an inline UNIQUE: rebuild the table (a copy of every
    row, in this migration's transaction; DROP TABLE fires no trigger)."""
    with op.batch_alter_table("events", copy_from=_events_0004(), recreate="always"):
        pass
    for ddl in SQLITE_TRIGGERS:
        op.execute(ddl)


def downgrade() -> None:
    raise NotImplementedError("the event store is append-only; restore from backup instead")

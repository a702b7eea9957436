"""Table definitions the store queries. Migrations (events/migrations) own the
DDL; these mirror revision head and must change together with a new revision."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

POSITION = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# The event types `read_types` finds through an index (0004): the pending
# confirmations, and the job list and resume. A partial index holds only
# these rare rows, so other appends do not write it; `SqlEventStore.raw_all`
# repeats this exact clause so both backends can use it. Another type is read
# by a scan in position order. Changing the list takes a migration.
INDEXED_TYPES = (
    "ConfirmationRequested",
    "ConfirmationGranted",
    "ConfirmationDenied",
    "JobSubmitted",
    "JobCompleted",
)
INDEXED_TYPES_SQL = sa.text("type IN (" + ", ".join(f"'{t}'" for t in INDEXED_TYPES) + ")")

# 0005: the idempotency index holds only rows that carry a key.
KEYED_SQL = sa.text("idempotency_key IS NOT NULL")

events = sa.Table(
    "events",
    metadata,
    sa.Column("position", POSITION, primary_key=True, autoincrement=True),
    sa.Column("stream_id", sa.String(200), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("event_id", sa.String(36), nullable=False),  # 0004: not unique
    sa.Column("type", sa.String(100), nullable=False),
    sa.Column("correlation_id", sa.String(200), nullable=False),
    sa.Column("idempotency_key", sa.String(300), nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("stream_id", "seq", name="uq_events_stream_seq"),
    sa.Index("ix_events_correlation", "correlation_id", "position"),
    # Partial since 0005: a keyed append's first and last rows (`events.inserts`).
    sa.Index(
        "ix_events_idempotency",
        "stream_id",
        "idempotency_key",
        sqlite_where=KEYED_SQL,
        postgresql_where=KEYED_SQL,
    ),
    # 0002, partial since 0004: only the rare types `read_types` is asked for.
    sa.Index(
        "ix_events_type_position",
        "type",
        "position",
        sqlite_where=INDEXED_TYPES_SQL,
        postgresql_where=INDEXED_TYPES_SQL,
    ),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("stream_id", sa.String(200), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", sa.LargeBinary, nullable=False),
)

# 0003: the data keys that encrypt a stream's forgettable payload fields
# (events.sealing), wrapped by a key-encryption key the database does not hold.
# Forgetting a stream clears `wrapped` (the only copy) and records who and why.
data_keys = sa.Table(
    "data_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("scope", sa.String(200), nullable=False),
    sa.Column("kek_id", sa.String(64), nullable=False),
    sa.Column("wrapped", sa.LargeBinary, nullable=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("forgotten_at", sa.String(32), nullable=True),
    sa.Column("forgotten_by", sa.String(200), nullable=True),
    sa.Column("forgotten_reason", sa.Text, nullable=True),
    sa.Index("ix_data_keys_scope", "scope"),
)

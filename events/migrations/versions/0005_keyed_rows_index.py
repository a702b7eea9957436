"""The idempotency index holds a keyed append's first and last rows only.

Every event of a keyed append carried its key in `idempotency_key`, so the
index on (stream_id, idempotency_key) took one entry per event: 100 for a
100-event step. From here an append writes the key on its first and last
rows (`events.inserts.edge_keys`; every body still holds it, so the hashes
and what readers see do not change), and the index is partial, `WHERE
idempotency_key IS NOT NULL`: two entries per keyed append, none for an
unkeyed one. A key's batch is the seq range between its first and last
keyed rows (`events.inserts.KEY_ROWS`), which finds the batches stored
before this revision (the key on every row) the same way. Every query on
the events table and the index it uses: docs/event-store-indexes.md.

Rows stay as they are (the table is append-only); the index is rebuilt
from the rows that have a key, a plain CREATE INDEX that blocks appends
while it reads the table, as in 0002 and 0004: run `orchestrator db
upgrade` when the service is quiet.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

KEYED = "idempotency_key IS NOT NULL"


def upgrade() -> None:
    op.drop_index("ix_events_idempotency", table_name="events")
    op.create_index(
        "ix_events_idempotency",
        "events",
        ["stream_id", "idempotency_key"],
        sqlite_where=sa.text(KEYED),
        postgresql_where=sa.text(KEYED),
    )


def downgrade() -> None:
    raise NotImplementedError("the event store is append-only; restore from backup instead")

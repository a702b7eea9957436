"""Data keys of encrypted payload fields: one row per key, in a table of its
own (not the append-only events) so forgetting a stream can destroy its key.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("forgotten_at", sa.String(32), nullable=True),
        sa.Column("forgotten_by", sa.String(200), nullable=True),
        sa.Column("forgotten_reason", sa.Text, nullable=True),
    )
    op.create_index("ix_data_keys_scope", "data_keys", ["scope"])


def downgrade() -> None:
    op.drop_index("ix_data_keys_scope", table_name="data_keys")
    op.drop_table("data_keys")

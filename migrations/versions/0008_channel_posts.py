"""Outage events posted to channels (apprise), each with its retries

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "channel_posts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("update_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("done_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("remote_id", sa.String(64), nullable=False, server_default=""),
        sa.ForeignKeyConstraint(["update_id"], ["incident_updates.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("update_id", "channel", name="uq_channel_posts_update_channel"),
    )
    op.create_index("ix_channel_posts_due", "channel_posts", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_channel_posts_due", table_name="channel_posts")
    op.drop_table("channel_posts")

"""comments: held messages become comments attached to posts; moderation log; threading ids

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("held_messages") as batch:
        batch.drop_index("ix_held_messages_status")
    op.rename_table("held_messages", "comments")
    with op.batch_alter_table("comments") as batch:
        batch.add_column(sa.Column("post_slug", sa.String(255), nullable=True))
        batch.add_column(sa.Column("post_title", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("post_path", sa.String(1000), nullable=False, server_default=""))
        batch.add_column(sa.Column("text", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("attachments", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("decided_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("decided_by", sa.String(255), nullable=False, server_default=""))
        batch.add_column(sa.Column("published", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.create_index("ix_comments_status", ["status"])
        batch.create_index("ix_comments_post", ["list_address", "post_slug", "status"])
        batch.create_index("ix_comments_sender", ["sender"])
        batch.create_index("ix_comments_unpublished", ["published"])
    op.create_table(
        "moderation_events",
        sa.Column("id", Id, nullable=False),
        sa.Column("comment_id", Id, nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_moderation_events_comment", "moderation_events", ["comment_id"])
    with op.batch_alter_table("outbox_messages") as batch:
        batch.add_column(sa.Column("header_message_id", sa.String(998), nullable=False, server_default=""))
        batch.add_column(sa.Column("post_slug", sa.String(255), nullable=True))
        batch.create_index("ix_outbox_messages_header_message_id", ["header_message_id"])


def downgrade() -> None:
    with op.batch_alter_table("outbox_messages") as batch:
        batch.drop_index("ix_outbox_messages_header_message_id")
        batch.drop_column("post_slug")
        batch.drop_column("header_message_id")
    op.drop_index("ix_moderation_events_comment", table_name="moderation_events")
    op.drop_table("moderation_events")
    with op.batch_alter_table("comments") as batch:
        for index in ("ix_comments_unpublished", "ix_comments_sender", "ix_comments_post", "ix_comments_status"):
            batch.drop_index(index)
        for column in (
            "published",
            "decided_by",
            "decided_at",
            "attachments",
            "text",
            "post_path",
            "post_title",
            "post_slug",
        ):
            batch.drop_column(column)
    op.rename_table("comments", "held_messages")
    with op.batch_alter_table("held_messages") as batch:
        batch.create_index("ix_held_messages_status", ["status"])

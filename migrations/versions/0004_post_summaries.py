"""post_summaries: one row per post with comments, and its rendered index line;
an index for the feed's newest comments

Filled by the next publish (or `archive rebuild`): nothing to migrate from the comments.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "post_summaries",
        sa.Column("list_address", sa.String(320), nullable=False),
        sa.Column("post_slug", sa.String(255), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("last", sa.DateTime(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("list_address", "post_slug"),
    )
    op.create_index("ix_post_summaries_order", "post_summaries", ["list_address", "last", "post_slug"])
    op.create_index("ix_comments_feed", "comments", ["list_address", "status", "received_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_comments_feed", table_name="comments")
    op.drop_index("ix_post_summaries_order", table_name="post_summaries")
    op.drop_table("post_summaries")

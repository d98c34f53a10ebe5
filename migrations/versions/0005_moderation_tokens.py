"""comments.notice_due: held comments whose moderators' notice is not made yet;
moderation_tokens: the secret of a held comment's approve/reject addresses;
moderation_mails: when each list last sent its summary and its daily reminder

Comments already held get their notice from the next `serve` (within the hourly limit), but
those held as automatic messages or mail loops, which never bring one.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("comments") as batch:
        batch.add_column(sa.Column("notice_due", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(
        "UPDATE comments SET notice_due = true"
        " WHERE status = 'held' AND reason NOT IN ('automatic message', 'mail loop')"
    )
    op.create_index(
        "ix_comments_notice_due",
        "comments",
        ["list_address"],
        sqlite_where=sa.text("notice_due = 1"),
        postgresql_where=sa.text("notice_due"),
    )
    op.create_table(
        "moderation_tokens",
        sa.Column("comment_id", Id, nullable=False),
        sa.Column("list_address", sa.String(320), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("notified", sa.Boolean(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["comment_id"], ["comments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("comment_id"),
        sa.UniqueConstraint("token"),
    )
    op.create_index("ix_moderation_tokens_created_at", "moderation_tokens", ["created_at"])
    op.create_table(
        "moderation_mails",
        sa.Column("list_address", sa.String(320), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("list_address", "kind"),
    )


def downgrade() -> None:
    op.drop_table("moderation_mails")
    op.drop_index("ix_moderation_tokens_created_at", table_name="moderation_tokens")
    op.drop_table("moderation_tokens")
    op.drop_index("ix_comments_notice_due", table_name="comments")
    with op.batch_alter_table("comments") as batch:
        batch.drop_column("notice_due")

"""Spent unsubscribe tokens, as digests: a one-click link used again says it is done; the
stand-in of each recipient's token in a list mail's body

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spent_tokens",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("list_address", sa.String(320), nullable=False),
        sa.Column("spent_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    with op.batch_alter_table("outbox_messages") as batch:
        batch.add_column(sa.Column("token_placeholder", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("outbox_messages") as batch:
        batch.drop_column("token_placeholder")
    op.drop_table("spent_tokens")

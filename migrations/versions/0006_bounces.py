"""Bounces: each subscriber's score and disabled delivery; outbox_messages.verp; the key that
signs the bounce addresses' tokens; the bounces counted per mail; outbox recipients by address

Revision ID: 0006
Revises: 0005
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(sa.Column("bounce_score", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_bounce_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("disabled_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("warnings_sent", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_warning_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("outbox_messages") as batch:
        batch.add_column(sa.Column("verp", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_outbox_recipients_address", "outbox_recipients", ["address"])
    op.create_table(
        "outbox_bounces",
        sa.Column("recipient_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False),
        sa.Column("bounced_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("recipient_id"),
    )
    table = op.create_table(
        "secrets",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(table, [{"name": "verp", "value": secrets.token_bytes(32)}])


def downgrade() -> None:
    op.drop_table("secrets")
    op.drop_table("outbox_bounces")
    op.drop_index("ix_outbox_recipients_address", table_name="outbox_recipients")
    with op.batch_alter_table("outbox_messages") as batch:
        batch.drop_column("verp")
    with op.batch_alter_table("subscribers") as batch:
        for column in ("last_warning_at", "warnings_sent", "disabled_at", "last_bounce_at", "bounce_score"):
            batch.drop_column(column)

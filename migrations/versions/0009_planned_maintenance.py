"""A planned maintenance's window on its incident

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("planned_start", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("planned_end", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("planned_end")
        batch.drop_column("planned_start")

"""Alembic environment: runs on the connection listbridge hands over (see store.alembic_config)."""

from alembic import context
from sqlalchemy import create_engine

from listbridge.models import Base

config = context.config
target_metadata = Base.metadata


def run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    with create_engine(url).begin() as fresh:
        run(fresh)

"""Alembic environment: runs on the connection listbridge hands over (see store.alembic_config)."""

from alembic import context
from sqlalchemy import Connection, create_engine

from listbridge.models import Base

config = context.config
target_metadata = Base.metadata


def run(connection: Connection) -> None:
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
    if url is None:
        raise RuntimeError("no connection handed over and no sqlalchemy.url: nothing to migrate")
    with create_engine(url).begin() as fresh:
        run(fresh)

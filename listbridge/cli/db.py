"""`listbridge db upgrade`."""

import click
from sqlalchemy.engine import make_url

from listbridge.cli import App, cli, pass_app


@cli.group()
def db() -> None:
    """Database schema."""


@db.command()
@click.argument("revision", default="head")
@pass_app
def upgrade(app: App, revision: str) -> None:
    """Apply the schema migrations (to REVISION, default the newest)."""
    app.db.upgrade(revision)
    shown = make_url(app.settings.database.url).render_as_string(hide_password=True)
    click.echo(f"database at {revision}: {shown}")

"""`listbridge db upgrade`."""

import click

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
    click.echo(f"database at {revision}: {app.settings.database.url}")

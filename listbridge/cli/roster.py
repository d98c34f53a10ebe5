"""`listbridge roster export PATH|import PATH`."""

import click

from listbridge.cli import App, cli, pass_app
from listbridge.outage import roster as roster_file


@cli.group()
def roster() -> None:
    """The subscriber snapshot that the watcher uses while home is down."""


@roster.command()
@click.argument("path", type=click.Path())
@pass_app
def export(app: App, path: str) -> None:
    """Write the confirmed subscribers to PATH, atomically (run it often: it is a heartbeat)."""
    try:
        with app.ready_db().transaction() as session:
            snapshot = roster_file.export(session, path)
    except roster_file.RosterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{snapshot.subscribers} subscribers of {len(snapshot.lists)} list(s) written to {path}")


@roster.command("import")
@click.argument("path", type=click.Path())
@pass_app
def import_(app: App, path: str) -> None:
    """Replace the subscribers of the lists in PATH with its content."""
    try:
        with app.ready_db().transaction() as session:
            snapshot = roster_file.import_(session, path)
    except roster_file.RosterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{snapshot.subscribers} subscribers imported, "
        f"exported {snapshot.exported_at.isoformat(timespec='seconds')} UTC"
    )

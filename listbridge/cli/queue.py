"""`listbridge queue list|flush`."""

import click

from listbridge.cli import App, cli, pass_app
from listbridge.cli.output import emit, progress
from listbridge.outbound import delivery, outbox


@cli.group()
def queue() -> None:
    """The outbox of outgoing mail."""


@queue.command("list")
@click.option("--all", "include_done", is_flag=True, help="also messages fully delivered or failed")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def list_(app: App, include_done: bool, as_json: bool) -> None:
    """Messages waiting in the outbox, with counts per state."""
    with app.ready_db().transaction() as session:
        rows = outbox.summary(session, include_done)
    emit(
        rows,
        as_json,
        [
            "id",
            "kind",
            "list",
            "created",
            "queued",
            "sending",
            "sent",
            "failed",
            "bounced",
            "next_attempt",
            "last_error",
        ],
    )


@queue.command()
@pass_app
def flush(app: App) -> None:
    """Deliver everything queued now (ignoring backoff), then exit."""
    db = app.ready_db()
    with db.transaction() as session:
        total = outbox.pending_count(session)
    with progress("delivering", total) as tick:
        delivery.flush(db, app.settings, progress=tick)
    with db.transaction() as session:
        left = outbox.pending_count(session)
    click.echo(f"{total - left} delivered or failed, {left} still queued")

"""`listbridge deliver`: one message piped by the MTA, answered with sysexits codes."""

import sys

import click

from .. import dispatch
from . import App, cli, pass_app


@cli.command()
@click.option("--recipient", "-r", "recipients", multiple=True, required=True, metavar="ADDR", help="envelope recipient")
@click.option("--sender", "-f", default="", metavar="ADDR", help="envelope sender")
@pass_app
def deliver(app: App, recipients: tuple[str, ...], sender: str) -> None:
    """Act on one message read from standard input (for an MTA pipe transport)."""
    raw = sys.stdin.buffer.read()
    if len(raw) > app.settings.smtp.max_message_size:
        click.echo("552 5.3.4 Message too big for this list", err=True)
        sys.exit(dispatch.EX_DATAERR)
    replies = []
    for rcpt in recipients:
        refusal = dispatch.check_recipient(app.settings, rcpt)
        if refusal is not None:
            click.echo(f"{rcpt}: {refusal.line}", err=True)
            sys.exit(refusal.exit_code)
    try:
        db = app.ready_db()
    except Exception as exc:  # the MTA keeps the mail and retries
        click.echo(f"451 4.3.0 database unavailable: {exc}", err=True)
        sys.exit(dispatch.EX_TEMPFAIL)
    replies = dispatch.accept(db, app.settings, raw, sender, list(recipients))
    worst = max(replies, key=lambda r: (r.exit_code != 0, r.code))
    if worst.exit_code:
        click.echo(worst.line, err=True)
    sys.exit(worst.exit_code)

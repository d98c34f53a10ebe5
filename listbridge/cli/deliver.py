"""`listbridge deliver`: one message piped by the MTA, answered with sysexits codes.

Whatever goes wrong on our side (configuration, database, a bug) exits 75, so the MTA keeps
the mail and retries: only a verdict on the message itself (65, 67) makes it bounce.
"""

import logging
import sys

import click
from sqlalchemy.exc import SQLAlchemyError

from listbridge.cli import App, cli, pass_app
from listbridge.config import ConfigError
from listbridge.inbound import dispatch

log = logging.getLogger(__name__)


def _fail(line: str, code: int) -> None:
    click.echo(f"listbridge deliver: {line}", err=True)
    sys.exit(code)


def _reason(exc: BaseException) -> str:
    """The first line of an error, without SQLAlchemy's wrapper and background link."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@cli.command()
@click.option(
    "--recipient", "-r", "recipients", multiple=True, required=True, metavar="ADDR", help="envelope recipient"
)
@click.option("--sender", "-f", default="", metavar="ADDR", help="envelope sender")
@pass_app
def deliver(app: App, recipients: tuple[str, ...], sender: str) -> None:
    """Act on one message read from standard input (for an MTA pipe transport)."""
    raw = sys.stdin.buffer.read()
    try:
        settings = app.settings
    except ConfigError as exc:  # fixing the file must not cost the mail
        _fail(f"451 4.3.5 configuration error: {exc}", dispatch.EX_TEMPFAIL)
    if len(raw) > settings.smtp.max_message_size:
        _fail("552 5.3.4 Message too big for this list", dispatch.EX_DATAERR)
    for rcpt in recipients:
        refusal = dispatch.check_recipient(settings, rcpt)
        if refusal is not None:
            _fail(f"{rcpt}: {refusal.line}", refusal.exit_code)
    sender = "" if sender.strip() in ("", "<>") else sender.strip()
    try:
        replies = dispatch.accept(app.ready_db(), settings, raw, sender, list(recipients))
    except SQLAlchemyError as exc:
        _fail(f"451 4.3.0 database unavailable: {_reason(exc)}", dispatch.EX_TEMPFAIL)
    except Exception as exc:  # a bug: keep the mail queued at the MTA, and the details in the log
        log.debug("deliver failed", exc_info=True)
        _fail(f"451 4.3.0 internal error: {_reason(exc)}", dispatch.EX_TEMPFAIL)
    worst = max(replies, key=lambda r: (r.exit_code != 0, r.code))
    if worst.exit_code:
        _fail(worst.line, worst.exit_code)
    sys.exit(dispatch.EX_OK)

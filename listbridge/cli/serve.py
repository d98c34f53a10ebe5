"""`listbridge serve`."""

import click

from listbridge.archive.git import ensure_repo
from listbridge.cli import App, cli, pass_app
from listbridge.service import ListenError, Service


@cli.command()
@pass_app
def serve(app: App) -> None:
    """Receive mail over SMTP (or LMTP) and deliver the outbox, until SIGTERM/SIGINT."""
    settings = app.settings
    ensure_repo(settings.site.repo)
    try:
        Service(settings, app.db).run()
    except ListenError as exc:
        raise click.ClickException(str(exc)) from exc

"""`listbridge serve`."""

import click

from ..service import ListenError, Service
from ..site import ensure_repo
from . import App, cli, pass_app


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

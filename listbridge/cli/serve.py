"""`listbridge serve`."""

from ..service import Service
from ..site import ensure_repo
from . import App, cli, pass_app


@cli.command()
@pass_app
def serve(app: App) -> None:
    """Receive mail over SMTP (or LMTP) and deliver the outbox, until SIGTERM/SIGINT."""
    ensure_repo(app.settings.site.repo)
    Service(app.settings, app.db).run()

"""`listbridge watch [--once] [--json]`."""

import json
import os
import signal
import threading

import click

from listbridge.archive.git import ensure_repo
from listbridge.cli import App, cli, pass_app
from listbridge.outage import channels
from listbridge.outage.watch import Watcher
from listbridge.outbound import delivery, outbox
from listbridge.web import unsubscribe
from listbridge.web.server import WebServer


@cli.command()
@click.option("--once", is_flag=True, help="probe once, record the result, send the mail due, print it and exit")
@click.option("--json", "as_json", is_flag=True, help="with --once: print JSON")
@pass_app
def watch(app: App, once: bool, as_json: bool) -> None:
    """Probe the home MX; when it is down, tell every subscriber (through [relay])."""
    ensure_repo(app.settings.site.repo)
    watcher = Watcher(app.settings, app.ready_db())
    if once:
        tick = watcher.tick()
        sent, queued = _deliver(app)
        if as_json:
            click.echo(json.dumps({**tick.as_dict(), "mail_sent": sent, "mail_queued": queued}))
            return
        click.echo(
            f"{tick.mx}: {'up' if tick.ok else 'DOWN'} at {tick.step} ({tick.detail}, {tick.seconds}s); "
            f"state {tick.state}, {tick.failures} failure(s), {tick.successes} success(es)"
            + (f"; event: {tick.event}" if tick.event else "")
        )
        if sent or queued:
            click.echo(
                f"mail: {sent} delivered or failed, {queued} still queued"
                + (" (retried by the next run once due)" if queued else "")
            )
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    listener = _web(app, watcher)
    try:
        watcher.run(stop)
    finally:
        if listener is not None:
            listener.stop()


def _web(app: App, watcher: Watcher) -> WebServer | None:
    """With [web] listen: one-click unsubscribe from the roster, forwarded home by mail."""
    web = app.settings.web
    if not web.listen:
        return None
    host, port = web.address()
    make = unsubscribe.make_app(app.ready_db(), app.settings, on_mail=watcher.wakeup.set, watcher=True)
    listener = WebServer(make, host, port)
    try:
        listener.start()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise click.ClickException(f"cannot listen on {host}:{port} ([web] listen): {reason}.") from exc
    return listener


def _deliver(app: App) -> tuple[int, int]:
    """Send the notices a probe queued (and any mail now due), as `queue flush` does: a cron
    job running `watch --once` has no other sender. (delivered or failed, still queued)"""
    db = app.ready_db()
    channels.deliver_due(db, app.settings)  # apart from mail: a dead channel delays none of it
    with db.transaction() as session:
        before = outbox.pending_count(session)
    if before:
        delivery.deliver_due(db, app.settings)
    with db.transaction() as session:
        after = outbox.pending_count(session)
    return before - after, after

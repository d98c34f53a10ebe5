"""`listbridge watch [--once] [--json]`."""

import json
import signal
import threading

import click

from ..site import ensure_repo
from ..watch import Watcher
from . import App, cli, pass_app


@cli.command()
@click.option("--once", is_flag=True, help="probe once, record the result, print it and exit")
@click.option("--json", "as_json", is_flag=True, help="with --once: print JSON")
@pass_app
def watch(app: App, once: bool, as_json: bool) -> None:
    """Probe the home MX; when it is down, tell every subscriber (through [relay])."""
    ensure_repo(app.settings.site.repo)
    watcher = Watcher(app.settings, app.ready_db())
    if once:
        tick = watcher.tick()
        if as_json:
            click.echo(json.dumps(tick.as_dict()))
        else:
            click.echo(f"{tick.mx}: {'up' if tick.ok else 'DOWN'} at {tick.step} ({tick.detail}, {tick.seconds}s); "
                       f"state {tick.state}, {tick.failures} failure(s), {tick.successes} success(es)"
                       + (f"; event: {tick.event}" if tick.event else ""))
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    watcher.run(stop)

"""`listbridge outage declare|update|resolve|status`."""

from __future__ import annotations

import json
from collections.abc import Callable

import click
from sqlalchemy.orm import Session

from listbridge.cli import App, cli, pass_app
from listbridge.lists.comments import actor
from listbridge.models import INCIDENT_STATUSES, RESOLVED, Incident, ProbeStatus
from listbridge.outage import channels, incidents
from listbridge.outage.watch import publish_status_safely, roster_age

OPEN_STATUSES = [s for s in INCIDENT_STATUSES if s != RESOLVED]


@cli.group("outage")
def outage_group() -> None:
    """Tell subscribers about an outage (also done by `watch` when the MX stops answering)."""


def _act(app: App, what: Callable[[Session], Incident | None], page_message: str) -> None:
    db = app.ready_db()
    try:
        with db.transaction() as session:
            incident = what(session)
            assert incident is not None  # resolve() returns None only when automatic_only
            summary = f"#{incident.id} {incident.status}: {incident.nature}"
    except incidents.OutageError as exc:
        raise click.ClickException(str(exc)) from None
    publish_status_safely(db, app.settings, page_message.format(summary=summary))
    click.echo(summary)
    click.echo("notices queued; `serve` or `watch` delivers them (or `listbridge queue flush`).")


@outage_group.command()
@click.option("--nature", required=True, help="what broke, in a few words")
@click.option("--eta", default="", help="when it should be back (free text)")
@click.option("--status", type=click.Choice(OPEN_STATUSES), default="investigating", show_default=True)
@click.option("--planned", is_flag=True, help="a maintenance window ahead, from --start to --end")
@click.option("--start", default="", help="with --planned: ISO 8601, or YYYY-MM-DD HH:MM in local time")
@click.option("--end", default="", help="with --planned: the same")
@pass_app
def declare(app: App, nature: str, eta: str, status: str, planned: bool, start: str, end: str) -> None:
    """Open an outage (known, even while the MX still answers), or announce a maintenance."""
    if not planned:
        if start or end:
            raise click.UsageError("--start and --end go with --planned.")
        _act(app, lambda s: incidents.declare(s, app.settings, nature, eta, status, actor()), "Outage: {summary}")
        return
    if not start or not end:
        raise click.UsageError("--planned needs --start and --end.")
    try:
        window = incidents.parse_time(start), incidents.parse_time(end)
    except incidents.OutageError as exc:
        raise click.ClickException(str(exc)) from None
    _act(app, lambda s: incidents.plan(s, app.settings, nature, *window, actor()), "Maintenance planned: {summary}")


@outage_group.command()
@click.option("--message", default="", help="the news")
@click.option("--eta", default=None, help="new expected time of return")
@click.option("--status", type=click.Choice(OPEN_STATUSES), default=None)
@pass_app
def update(app: App, message: str, eta: str | None, status: str | None) -> None:
    """Add news to the open outage."""
    _act(app, lambda s: incidents.update(s, app.settings, message, eta, status, actor()), "Outage update: {summary}")


@outage_group.command()
@click.option("--message", default="", help="a last word")
@pass_app
def resolve(app: App, message: str) -> None:
    """Close the open outage and send the "back to normal" notice."""
    _act(app, lambda s: incidents.resolve(s, app.settings, message, actor()), "Resolved: {summary}")


@outage_group.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def status(app: App, as_json: bool) -> None:
    """The open outage, the MX as the watcher sees it, and the roster's age."""
    db = app.ready_db()
    with db.transaction() as session:
        incident = incidents.current(session)
        changes = incidents.updates(session, incident) if incident else []
        probe = session.get(ProbeStatus, 1)
        data: dict[str, object] = {
            "outage": None
            if incident is None
            else {
                "id": incident.id,
                "nature": incident.nature,
                "status": incident.status,
                "eta": incident.eta,
                "automatic": incident.automatic,
                "opened_at": incident.opened_at.isoformat(timespec="seconds"),
                # A maintenance's window, in the watcher's zone ("" for an outage).
                "window": (
                    f"from {channels.local_time(incident.planned_start)} to {channels.local_time(incident.planned_end)}"
                    if incident.planned_start
                    else ""
                ),
                "updates": [
                    {
                        "at": u.at.isoformat(timespec="seconds"),
                        "kind": u.kind,
                        "status": u.status,
                        "message": u.message,
                        "eta": u.eta,
                        "by": u.actor,
                    }
                    for u in changes
                ],
            },
            "mx": None
            if probe is None
            else {
                "state": probe.state,
                "failures": probe.failures,
                "successes": probe.successes,
                "last_probe": probe.last_at.isoformat(timespec="seconds") if probe.last_at else None,
                "last_result": probe.last_detail,
            },
        }
        # Mailboxes on the MX that is down: told once it is back, not before.
        data["unreachable_by_mail"] = incidents.unreachable_count(session, app.settings)
        channel_rows = channels.status(session)
        data["channels"] = channel_rows
        windows = [
            {
                "id": m.id,
                "nature": m.nature,
                "start": channels.local_time(m.planned_start),
                "end": channels.local_time(m.planned_end),
            }
            for m in incidents.upcoming(session)
        ]
        data["planned"] = windows
    exported, too_old = roster_age(app.settings, db)
    data["roster"] = {"exported_at": exported.isoformat(timespec="seconds") if exported else None, "stale": too_old}
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    o = data["outage"]
    if o is None:
        click.echo("No outage is open.")
    else:
        assert isinstance(o, dict)
        if o["window"]:
            click.echo(f"Maintenance #{o['id']} ({o['status']}) {o['window']}: {o['nature']}")
        else:
            click.echo(f"Outage #{o['id']} ({o['status']}) since {o['opened_at']} UTC: {o['nature']}")
            click.echo(f"Expected back: {o['eta'] or 'unknown'}")
        for u in o["updates"]:
            click.echo(f"  {u['at']} {u['kind']} ({u['status']}) {u['message']}".rstrip())
    if data["mx"]:
        mx = data["mx"]
        assert isinstance(mx, dict)
        click.echo(f"MX {app.settings.watch.mx}: {mx['state']} (last probe {mx['last_probe']}: {mx['last_result']})")
    for window in windows:
        click.echo(f"Planned #{window['id']}: {window['start']} to {window['end']}: {window['nature']}")
    for channel in channel_rows:
        retry = f", next try {channel['next_attempt']} UTC" if channel["next_attempt"] else ""
        error = f": {channel['last_error']}" if channel["last_error"] else ""
        click.echo(
            f"Channel {channel['channel']}: {channel['state']} after {channel['attempts']} attempt(s){retry}{error}"
        )
    if data["unreachable_by_mail"]:
        click.echo(f"Unreachable by mail: {data['unreachable_by_mail']} subscribers (their mailbox is on that MX)")
    if exported is None:
        click.echo("Roster: none imported yet (run `listbridge roster export` at home and copy it here).")
    elif too_old:
        click.echo(
            f"Roster: WARNING, exported {exported.isoformat(timespec='seconds')} UTC, older than "
            f"{app.settings.watch.roster_max_age:g} h: is home exporting it?"
        )
    else:
        click.echo(f"Roster: exported {exported.isoformat(timespec='seconds')} UTC")

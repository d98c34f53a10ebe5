"""`listbridge subscribers list|add|remove|enable|import|export`."""

from __future__ import annotations

from collections.abc import Iterator
from email.utils import parseaddr
from pathlib import Path

import click
from sqlalchemy import select

from listbridge.cli import App, cli, pass_app
from listbridge.cli.output import emit, progress
from listbridge.lists import bounces
from listbridge.lists.context import ListContext
from listbridge.lists.subscriptions import find_subscriber, normalise, subscribe, unsubscribe
from listbridge.models import Subscriber

list_option = click.option(
    "--list", "list_address", metavar="ADDR", help="which list (needed when several are configured)"
)


@cli.group()
def subscribers() -> None:
    """Confirmed subscribers."""


def _context(app: App, list_address: str | None) -> ListContext:
    mlist = app.settings.list_for(app.list_address(list_address))
    assert mlist is not None
    return ListContext(app.settings, mlist)


@subscribers.command("list")
@list_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def list_(app: App, list_address: str | None, as_json: bool) -> None:
    """Show the subscribers."""
    db = app.ready_db()
    query = select(Subscriber).order_by(Subscriber.list_address, Subscriber.address)
    if list_address:
        query = query.where(Subscriber.list_address == app.list_address(list_address))
    with db.transaction() as session:
        rows = [
            {
                "list": s.list_address,
                "address": s.address,
                "name": s.display_name,
                "since": s.subscribed_at.isoformat(timespec="seconds"),
                "delivery": "on" if s.disabled_at is None else "off (bounces)",
                "bounces": s.bounce_score,
            }
            for s in session.scalars(query)
        ]
    emit(rows, as_json, ["list", "address", "name", "since", "delivery", "bounces"])


def _parse(entry: str) -> tuple[str, str]:
    name, address = parseaddr(entry)
    if "@" not in address or " " in address:
        raise click.BadParameter(f"{entry!r} is not an address.")
    return name, address


@subscribers.command()
@list_option
@click.argument("entries", nargs=-1, required=True, metavar="ADDR…")
@pass_app
def add(app: App, list_address: str | None, entries: tuple[str, ...]) -> None:
    """Subscribe addresses (`addr` or `Name <addr>`) with no confirmation and no mail."""
    parsed = [_parse(e) for e in entries]  # all checked before anything is stored
    ctx = _context(app, list_address)
    with app.ready_db().transaction() as session:
        for name, address in parsed:
            added = subscribe(session, ctx, address, name)
            click.echo(f"{'added' if added else 'already subscribed'}: {address}")


@subscribers.command()
@list_option
@click.argument("addresses", nargs=-1, required=True, metavar="ADDR…")
@pass_app
def remove(app: App, list_address: str | None, addresses: tuple[str, ...]) -> None:
    """Unsubscribe addresses, with no mail."""
    parsed = [_parse(a)[1] for a in addresses]
    ctx = _context(app, list_address)
    with app.ready_db().transaction() as session:
        for address in parsed:
            removed = unsubscribe(session, ctx, address)
            click.echo(f"{'removed' if removed else 'not subscribed'}: {address}")


@subscribers.command()
@list_option
@click.argument("addresses", nargs=-1, required=True, metavar="ADDR…")
@pass_app
def enable(app: App, list_address: str | None, addresses: tuple[str, ...]) -> None:
    """Deliver list mail again to subscribers whose delivery bounces turned off; each is told."""
    parsed = [_parse(a)[1] for a in addresses]
    ctx = _context(app, list_address)
    with app.ready_db().transaction() as session:
        for address in parsed:
            subscriber = find_subscriber(session, ctx.mlist.address, normalise(address))
            click.echo(bounces.enable(session, ctx, subscriber) if subscriber else f"{address}: not subscribed")


def read_entries(path: Path) -> Iterator[str]:
    """Lines of a subscriber file, or of an mlmmj list directory's subscribers.d/."""
    files = sorted((path / "subscribers.d").glob("*")) if path.is_dir() else [path]
    if path.is_dir() and not (path / "subscribers.d").is_dir():
        raise click.BadParameter(f"{path} is a folder but not an mlmmj list (no subscribers.d/).")
    for file in files:
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                yield line


@subscribers.command("import")
@list_option
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@pass_app
def import_(app: App, list_address: str | None, source: Path) -> None:
    """Subscribe everyone in SOURCE: a file of `addr` / `Name <addr>` lines, or an mlmmj list folder."""
    entries = [_parse(line) for line in read_entries(source)]  # a bad line stops the import before any change
    ctx = _context(app, list_address)
    added = 0
    with progress("importing", len(entries)) as tick, app.ready_db().transaction() as session:
        for name, address in entries:
            added += subscribe(session, ctx, address, name)
            tick(1)
    click.echo(f"{added} added, {len(entries) - added} already subscribed")


@subscribers.command()
@list_option
@pass_app
def export(app: App, list_address: str | None) -> None:
    """Print the subscribers, one `Name <addr>` per line (the import format)."""
    ctx = _context(app, list_address)
    with app.ready_db().transaction() as session:
        query = select(Subscriber).where(Subscriber.list_address == ctx.mlist.address).order_by(Subscriber.address)
        for s in session.scalars(query).yield_per(1000):
            click.echo(entry(s.display_name, s.address))


def entry(name: str, address: str) -> str:
    """`Name <addr>` in readable Unicode (not RFC 2047), quoted when the name needs it."""
    if not name:
        return address
    if any(c in name for c in '()<>@,;:\\".[]'):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"

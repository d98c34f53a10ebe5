"""`listbridge forget ADDRESS`: a privacy request."""

import hashlib

import click
from sqlalchemy import delete, select

from .. import publish
from ..comments import actor
from ..models import APPROVED, HELD, QUEUED, REMOVED, AutoReply, Comment, Confirmation, ModerationEvent, OutboxRecipient, Subscriber
from . import App, cli, pass_app


@cli.command()
@click.argument("address")
@click.option("--delete", "delete_comments", is_flag=True, help="delete published comments instead of leaving a removal note")
@pass_app
def forget(app: App, address: str, delete_comments: bool) -> None:
    """Remove a person: subscriptions, pending requests and mail, and their comments."""
    address = address.strip().lower()
    if "@" not in address:
        raise click.BadParameter(f"{address!r} is not an address.")
    db = app.ready_db()
    touched: dict[str, set[str]] = {}
    with db.transaction() as session:
        subs = session.execute(delete(Subscriber).where(Subscriber.address == address)).rowcount
        session.execute(delete(Confirmation).where(Confirmation.address == address))
        session.execute(delete(AutoReply).where(AutoReply.address == address))
        session.execute(delete(OutboxRecipient).where(OutboxRecipient.address == address, OutboxRecipient.state == QUEUED))
        held = session.execute(delete(Comment).where(Comment.sender == address, Comment.status == HELD)).rowcount
        published = list(session.scalars(select(Comment).where(Comment.sender == address)))
        for c in published:
            if c.status in (APPROVED, REMOVED) and c.post_slug:
                touched.setdefault(c.list_address, set()).add(c.post_slug)
            if delete_comments:
                session.delete(c)
            else:  # keep the thread readable: a note replaces the text; nothing of the person stays
                c.status, c.text, c.display_name, c.sender, c.subject, c.raw = REMOVED, "", "", "", "", b""
                c.message_id, c.in_reply_to, c.published = "", "", True
        digest = hashlib.sha256(address.encode()).hexdigest()[:16]  # the log must not keep the address
        session.add(ModerationEvent(comment_id=None, action="forget", actor=actor(), detail=f"sha256:{digest}"))
    publish.republish(db, app.settings, touched, "Remove the comments of a person, at their request")
    click.echo(f"forgotten: {subs} subscription(s), {held} held and {len(published)} published comment(s)")

"""`listbridge forget ADDRESS`: a privacy request (what goes: listbridge/privacy.py)."""

import hashlib

import click
from sqlalchemy import update

from listbridge.archive import publish
from listbridge.cli import App, cli, pass_app
from listbridge.failurelog import summary
from listbridge.lists import privacy
from listbridge.lists.comments import actor
from listbridge.models import Comment, ModerationEvent


@cli.command()
@click.argument("address")
@click.option(
    "--delete", "delete_comments", is_flag=True, help="delete published comments instead of leaving a removal note"
)
@pass_app
def forget(app: App, address: str, delete_comments: bool) -> None:
    """Remove a person: subscriptions, pending requests, stored mail, and their comments."""
    address = address.strip().lower()
    if "@" not in address:
        raise click.BadParameter(f"{address!r} is not an address.")
    db = app.ready_db()
    with db.transaction() as session:
        done = privacy.forget(session, address, delete_comments)
        digest = hashlib.sha256(address.encode()).hexdigest()[:16]  # the log must not keep the address
        session.add(ModerationEvent(comment_id=None, action="forget", actor=actor(), detail=f"sha256:{digest}"))
    if not db.checkpoint():
        click.echo(
            "warning: another process reading the database kept the erased data in its write-ahead "
            "log (the -wal file); run forget again once it has stopped to empty it.",
            err=True,
        )
    click.echo(
        f"forgotten: {done.subscriptions} subscription(s), {done.held} held, {done.rejected} rejected "
        f"and {done.published} published comment(s), {done.mails} stored mail(s)"
    )
    try:
        publish.republish(db, app.settings, done.touched, "Remove the comments of a person, at their request")
    except publish.SITE_ERRORS as exc:
        raise click.ClickException(
            f"the site's pages could not be updated ({summary(exc)}): "
            "run `listbridge archive rebuild` once git works again."
        ) from exc
    with db.transaction() as session:  # the notes are on the site now
        session.execute(
            update(Comment)
            .where(Comment.id.in_(done.kept_as_notes))
            .values(published=True)
            .execution_options(synchronize_session=False)
        )

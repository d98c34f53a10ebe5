"""`listbridge moderate [list|show ID|approve ID…|reject ID…]`; no argument: interactive."""

from __future__ import annotations

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from listbridge.archive import publish
from listbridge.archive.posts import Post, site_posts
from listbridge.archive.slugs import slugify
from listbridge.cli import App, cli, pass_app
from listbridge.cli.output import emit
from listbridge.lists import comments
from listbridge.lists.context import ListContext
from listbridge.models import APPROVED, HELD, Comment


class CommentId(click.ParamType):
    """A comment id: a whole number the database can hold (SQLite INTEGER, PostgreSQL BIGINT).
    Anything else is one sentence, not an overflow in the driver nor a usage screen."""

    name = "id"
    largest = 2**63 - 1

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            number = int(str(value).strip())
        except ValueError:
            raise click.ClickException(f"{value!r} is not a comment id (a whole number).") from None
        if not 1 <= number <= self.largest:
            raise click.ClickException(f"no comment with id {number}.")
        return number


COMMENT_ID = CommentId()


@cli.group(invoke_without_command=True)
@click.pass_context
def moderate(ctx: click.Context) -> None:
    """Comments held for moderation (no command: go through them one by one)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(interactive)


def _row(c: Comment) -> dict[str, object]:
    return {
        "id": c.id,
        "list": c.list_address,
        "post": c.post_slug or "",
        "name": c.display_name,
        "sender": c.sender,
        "subject": c.subject,
        "received": c.received_at.isoformat(timespec="seconds"),
        "status": c.status,
        "reason": c.reason,
        "message_id": c.message_id,
    }


@moderate.command("list")
@click.option("--all", "everything", is_flag=True, help="also approved and rejected comments")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def list_(app: App, everything: bool, as_json: bool) -> None:
    """Held comments: id, post, author, subject, received, status, reason, Message-ID."""
    query = select(Comment).order_by(Comment.id)
    if not everything:
        query = query.where(Comment.status == HELD)
    with app.ready_db().transaction() as session:
        rows = [_row(c) for c in session.scalars(query)]
    several = ["list"] if len(app.settings.lists) > 1 else []  # which list, once it can differ
    emit(rows, as_json, ["id", *several, "post", "name", "subject", "received", "status", "reason", "message_id"])


def _load(session: Session, ids: tuple[int, ...]) -> list[Comment]:
    found = {c.id: c for c in session.scalars(select(Comment).where(Comment.id.in_(ids)))}
    missing = [str(i) for i in ids if i not in found]
    if missing:
        raise click.ClickException(f"no comment with id {', '.join(missing)}.")
    return [found[i] for i in ids]


def _show(c: Comment) -> str:
    lines = [
        f"#{c.id} {c.status}{f' ({c.reason})' if c.reason else ''}",
        f"From:     {c.display_name} <{c.sender}>" if c.display_name else f"From:     {c.sender}",
        f"Subject:  {c.subject}",
        f"List:     {c.list_address}",
        f"Post:     {c.post_slug or '(none)'}",
        f"Received: {c.received_at.isoformat(timespec='seconds')}",
        "",
        c.text,
    ]
    if c.attachments:
        lines.append(f"\n({c.attachments} attachment(s) not published)")
    return "\n".join(lines)


@moderate.command()
@click.argument("comment_id", type=COMMENT_ID)
@pass_app
def show(app: App, comment_id: int) -> None:
    """The comment's text as it will be published."""
    with app.ready_db().transaction() as session:
        click.echo(_show(_load(session, (comment_id,))[0]))


def _post(app: App, slug: str | None) -> Post | None:
    if slug is None:
        return None
    post = site_posts(app.settings).get(slugify(slug))
    if post is None:
        raise click.ClickException(f"no post {slug!r} under {app.settings.site.repo}/{app.settings.site.posts}.")
    return post


@moderate.command()
@click.argument("ids", nargs=-1, type=COMMENT_ID, required=True)
@click.option("--post", "slug", metavar="SLUG", help="attach the comments to this post first")
@pass_app
def approve(app: App, ids: tuple[int, ...], slug: str | None) -> None:
    """Publish held comments on the site and send them to the subscribers."""
    post = _post(app, slug)
    db = app.ready_db()
    approved, already = [], []
    try:
        with db.transaction() as session:
            for c in _load(session, ids):
                if comments.approve(session, _ctx(app, c), c, comments.actor(), post):
                    approved.append(str(c.id))
                else:
                    already.append(f"comment {c.id} was already {comments.decided(c)}")
    except comments.NotHeld as exc:  # nothing was approved: the transaction rolled back
        raise click.ClickException(f"{exc}; nothing was approved.") from None
    except comments.NoPost as exc:
        raise click.ClickException(f"{exc}: give one with --post SLUG.") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    for sha in publish.publish_pending(db, app.settings):
        click.echo(f"site commit {sha[:10]}")
    for line in already:
        click.echo(line)
    if approved:
        click.echo(f"approved: {' '.join(approved)}")


@moderate.command()
@click.argument("ids", nargs=-1, type=COMMENT_ID, required=True)
@click.option("--reason", default="", help="why (kept in the log, and told to the author with --notify)")
@click.option("--notify", is_flag=True, help="tell the author (never for an automatic message)")
@click.option("--unpublish", is_flag=True, help="also reject comments already approved (their pages drop them)")
@pass_app
def reject(app: App, ids: tuple[int, ...], reason: str, notify: bool, unpublish: bool) -> None:
    """Refuse held comments (with --unpublish, take approved ones off the site too)."""
    db = app.ready_db()
    lines = []
    try:
        with db.transaction() as session:
            for c in _load(session, ids):
                done = comments.reject(session, _ctx(app, c), c, comments.actor(), reason, notify, unpublish)
                if not done.changed:
                    lines.append(f"comment {c.id} was already {comments.decided(c)}")
                else:
                    lines.append(f"rejected: {c.id}{' (author told)' if done.told else ''}")
    except comments.NotHeld as exc:
        hint = "" if unpublish or exc.status != APPROVED else " (--unpublish takes it off the site)"
        raise click.ClickException(f"{exc}; nothing was rejected{hint}.") from None
    for line in lines:  # only once committed
        click.echo(line)
    publish.publish_pending(db, app.settings)


def _ctx(app: App, c: Comment) -> ListContext:
    mlist = app.settings.list_for(c.list_address)
    if mlist is None:
        raise click.ClickException(f"comment {c.id} belongs to {c.list_address}, which is not configured any more.")
    return ListContext(app.settings, mlist)


@moderate.command(hidden=True)
@pass_app
def interactive(app: App) -> None:
    """One held comment at a time: [a]pprove, [r]eject, [s]kip, [q]uit."""
    db = app.ready_db()
    with db.transaction() as session:
        ids = list(session.scalars(select(Comment.id).where(Comment.status == HELD).order_by(Comment.id)))
    if not ids:
        click.echo("Nothing is waiting for moderation.")
        return
    for n, comment_id in enumerate(ids, 1):
        with db.transaction() as session:
            c = _load(session, (comment_id,))[0]
            if c.status != HELD:
                continue  # someone else decided meanwhile
            click.echo(f"\n[{n}/{len(ids)}] " + _show(c))
            choice = click.prompt(
                "[a]pprove, [r]eject, [s]kip, [q]uit", type=click.Choice(["a", "r", "s", "q"]), show_choices=False
            )
            if choice == "q":
                break
            if choice != "s":
                click.echo(_decide_one(app, session, c, choice))
    publish.publish_pending(db, app.settings)


def _decide_one(app: App, session: Session, c: Comment, choice: str) -> str:
    """Approve ("a") or reject ("r") one comment, asking what is needed; what became of it."""
    try:
        if choice == "a":
            slug = None if c.post_slug else click.prompt("No post matched: attach to which post (slug)")
            if not comments.approve(session, _ctx(app, c), c, comments.actor(), _post(app, slug)):
                return f"comment {c.id} was already {comments.decided(c)}"
            return f"approved: {c.id}"
        reason = click.prompt("Reason (empty: none)", default="", show_default=False)
        notify = click.confirm("Tell the author?", default=False)
        done = comments.reject(session, _ctx(app, c), c, comments.actor(), reason, notify=notify)
        return f"rejected: {c.id}" if done.changed else f"comment {c.id} was already {comments.decided(c)}"
    except comments.NotHeld as exc:  # another moderator decided meanwhile
        return f"skipped: {exc}"
    except (ValueError, click.ClickException) as exc:
        return f"not {'approved' if choice == 'a' else 'rejected'}: {exc}"

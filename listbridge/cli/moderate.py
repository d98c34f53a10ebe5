"""`listbridge moderate list`: the held messages (approval and rejection come with issue 3)."""

import click
from sqlalchemy import select

from ..models import Comment
from . import App, cli, pass_app
from .output import emit


@cli.group(invoke_without_command=False)
def moderate() -> None:
    """Messages held for moderation."""


@moderate.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def list_(app: App, as_json: bool) -> None:
    """Held messages: id, sender, name, subject, received, Message-ID."""
    with app.ready_db().transaction() as session:
        rows = [
            {
                "id": m.id,
                "list": m.list_address,
                "sender": m.sender,
                "name": m.display_name,
                "subject": m.subject,
                "received": m.received_at.isoformat(timespec="seconds"),
                "message_id": m.message_id,
                "status": m.status,
            }
            for m in session.scalars(select(Comment).where(Comment.status == "held").order_by(Comment.id))
        ]
    emit(rows, as_json, ["id", "sender", "name", "subject", "received", "message_id"])

"""Mail texts: both languages complete, chosen per list, overridable by a site's own folder."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import MutableMapping
from pathlib import Path

import jinja2
import pytest

from listbridge.config import build_settings
from listbridge.render import render_mail
from listbridge.resources import shipped_path

LIST_ADDRESS = "bla@bla.example.org"
CONTEXT = dict(
    name="Zoé",
    address="zoe@example.org",
    confirm_address="bla+confirm-x@d",
    days=7,
    subscribe_address="bla+subscribe@d",
    unsubscribe_address="bla+unsubscribe@d",
    help_address="bla+help@d",
    owner_address="bla+owner@d",
    post_title="Comment les 3hg ont réparé le CHATONS",
    text="Bravo !",
    author="Carole",
    attachments=2,
    page_url="gemini://d/log/commentaires/x.gmi",
    unsubscribe_url="https://lists.d/unsubscribe/x",
    subject="Re: x",
    reason="hors sujet",
    nature="power cut",
    status="identified",
    eta="tonight",
    message="ISP on site",
    opened_at=dt.datetime(2026, 11, 26, 9, 0),
    automatic=True,
    status_url="gemini://d/status.gmi",
    gemini_status_url="",
    history=[],
    planned=False,
    window_start="2026-12-05 22:00 CET",
    window_end="2026-12-06 02:00 CET",
    comment_id=3,
    approve_address="bla+approve-x@d",
    reject_address="bla+reject-x@d",
    limit=10,
    waiting=12,
    score=5,
    warnings=3,
    warning_days="7",
    removal_days="21",
    enable_address="bla+enable-x@d",
    count=1,
    items=[
        dict(
            id=3,
            received="2026-11-26 09:00 UTC",
            author="Carole",
            address="c@x",
            subject="x",
            post_title="x",
            reason="first post",
            approve_address="bla+approve-x@d",
            reject_address="bla+reject-x@d",
        )
    ],
)


def names(language: str) -> set[str]:
    return {p.stem for p in (shipped_path("templates") / "mail" / language).glob("*.txt")}


def test_both_languages_have_the_same_texts():
    assert names("en") == names("fr")
    assert {"confirm_subscribe", "confirm_unsubscribe", "welcome", "goodbye", "help"} <= names("en")


@pytest.mark.parametrize("language", ["en", "fr"])
def test_every_text_renders(language):
    """Every text compiles and fills in with a full context. Whether each caller passes what its
    text needs is tested through that caller (test_subscription_flow, test_outage, …): a full
    context here would hide a missing name."""
    mlist = build_settings({"lists": [{"address": "bla@d", "language": language}]}).lists[0]
    for name in names(language):
        subject, body = render_mail(mlist, name, **CONTEXT)
        assert subject and "\n" not in subject
        assert body.strip() and "{{" not in body


def test_language_is_chosen_per_list():
    fr = build_settings({"lists": [{"address": "bla@d", "language": "fr"}]}).lists[0]
    en = build_settings({"lists": [{"address": "bla@d", "language": "en"}]}).lists[0]
    assert render_mail(fr, "goodbye", **CONTEXT)[0].startswith("Vous avez quitté")
    assert render_mail(en, "goodbye", **CONTEXT)[0].startswith("You left")


def test_a_site_folder_overrides_and_extends_shipped_texts(tmp_path: Path):
    folder = tmp_path / "mytemplates" / "mail" / "fr"
    folder.mkdir(parents=True)
    (folder / "welcome.txt").write_text("Subject: Salut {{ name }}\n\nBienvenue chez nous, {{ address }}.\n")
    (folder / "help.txt").write_text('{% extends "default:mail/fr/help.txt" %}\n')
    mlist = build_settings(
        {"lists": [{"address": "bla@d", "language": "fr", "templates": str(tmp_path / "mytemplates")}]}
    ).lists[0]
    assert render_mail(mlist, "welcome", **CONTEXT) == ("Salut Zoé", "Bienvenue chez nous, zoe@example.org.\n")
    assert render_mail(mlist, "help", **CONTEXT)[0] == "Aide de la liste bla"
    assert render_mail(mlist, "goodbye", **CONTEXT)[0].startswith("Vous avez quitté")  # not overridden


def _mail(sender: str, subject: str = "hello", body: str = "Bonjour.") -> bytes:
    return f"From: {sender}\r\nTo: bla@bla.example.org\r\nSubject: {subject}\r\n\r\n{body}\r\n".encode()


@pytest.mark.parametrize("language", ["en", "fr"])
def test_every_text_renders_with_what_its_real_caller_passes(language, make_settings, db, tmp_path, monkeypatch):
    """Each text reached through the code that sends it (subscriptions, help, comments,
    outages), so that StrictUndefined fails on any name its caller does not pass: a full
    context, as above, would hide one."""
    from sqlalchemy import select

    from listbridge.archive.posts import site_posts
    from listbridge.inbound import dispatch
    from listbridge.lists import bounces, comments, moderation
    from listbridge.lists.context import ListContext
    from listbridge.lists.subscriptions import subscribe
    from listbridge.models import Comment, Confirmation, Subscriber
    from listbridge.outage import incidents

    from helpers import site_repo

    rendered: set[str] = set()
    get_template = jinja2.Environment.get_template

    def recording(
        self: jinja2.Environment,
        name: str,
        parent: str | None = None,
        globals: MutableMapping[str, object] | None = None,
    ) -> jinja2.Template:
        rendered.add(name)
        return get_template(self, name, parent, globals)

    monkeypatch.setattr(jinja2.Environment, "get_template", recording)
    site = site_repo(tmp_path / "site", {"log/un-billet.gmi": "# Un billet\n"})
    settings = make_settings(
        site={"repo": str(site), "base_url": "gemini://bla.example.org"},
        subscriptions={"confirm_limit": 100},
        lists=[{"address": LIST_ADDRESS, "owner": "owner@example.org", "language": language, "moderation": "all"}],
    )
    posts = site_posts(settings)

    def deliver(sender: str, to: str, **mail: str) -> None:
        replies = dispatch.accept(db, settings, _mail(sender, **mail), sender, [to], lambda: posts)
        assert [r.code for r in replies] == [250], replies

    def confirm(address: str) -> None:
        with db.transaction() as session:
            query = select(Confirmation.token).where(Confirmation.address == address).order_by(Confirmation.id.desc())
            token = session.scalars(query).first()
        deliver(address, f"bla+confirm-{token}@bla.example.org")

    deliver("zoe@example.org", "bla+subscribe@bla.example.org")  # confirm_subscribe
    confirm("zoe@example.org")  # welcome
    deliver("zoe@example.org", "bla+subscribe@bla.example.org")  # already_subscribed
    deliver("nobody@example.org", "bla+unsubscribe@bla.example.org")  # not_subscribed
    deliver("zoe@example.org", "bla+help@bla.example.org")  # help
    deliver("zoe@example.org", "bla+unsubscribe@bla.example.org")  # confirm_unsubscribe
    confirm("zoe@example.org")  # goodbye
    deliver("carole@example.net", LIST_ADDRESS, subject="Un billet")
    deliver("carole@example.net", LIST_ADDRESS, subject="Un billet", body="Hors sujet.")
    with db.transaction() as session:
        assert moderation.notify_held(session, settings, limit=1) == 1  # held, then held_summary
        later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=25)
        assert moderation.remind(session, settings, later) == 1  # held_reminder
    with db.transaction() as session:
        ctx = ListContext(settings, settings.lists[0])
        subscribe(session, ctx, "ann@example.org", name="Ann")
        first, second = session.scalars(select(Comment).order_by(Comment.id)).all()
        comments.approve(session, ctx, first, "moderator")  # comment, to the subscribers
        comments.reject(session, ctx, second, "moderator", "hors sujet", notify=True)  # rejected, to its author
        incidents.declare(session, settings, "power cut", "tonight", actor="admin")  # outage_opened
        incidents.update(session, settings, "ISP on site", actor="admin")  # outage_updated
        incidents.resolve(session, settings, "back", actor="admin")  # outage_resolved
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        incidents.plan(session, settings, "new disks", now, now + dt.timedelta(hours=1))  # outage_scheduled
        incidents.start_due(session, settings)  # outage_started
        day = dt.datetime(2026, 5, 1)
        subscribe(session, ctx, "bob@example.org")
        for address in ("ann@example.org", "bob@example.org"):
            for n in range(settings.bounces.threshold):  # bounce_disabled, bounce_warning
                bounces.count(session, ctx, address, day + dt.timedelta(days=n))
        ann = session.scalars(select(Subscriber).where(Subscriber.address == "ann@example.org")).one()
        bounces.enable(session, ctx, ann)  # bounce_enabled
        for n in range(settings.bounces.warnings):  # the other warnings, then bounce_removed
            bounces.follow_up(session, settings, day + dt.timedelta(days=100 + 10 * n))
        assert session.scalar(select(Subscriber.id).where(Subscriber.address == "bob@example.org")) is None
    assert rendered >= {f"mail/{language}/{name}.txt" for name in names(language)}


@pytest.mark.parametrize("language", ["en", "fr"])
def test_every_held_reason_reads_in_the_lists_language(language):
    """The reasons lists/comments.py records are English words in the database: the notice and
    the reminder show each in the list's language."""
    from listbridge.lists import comments

    mlist = build_settings({"lists": [{"address": "bla@d", "language": language}]}).lists[0]
    reasons = {
        comments.AUTOMATIC,
        comments.NO_POST,
        "too long",
        "sender not authenticated (no DKIM/DMARC pass)",
        "first post",
        "every comment is moderated",
    }
    decisions = [
        comments.decide(
            policy=policy,
            sender="c@x.org",
            allow=(),
            deny=(),
            known_sender=known,
            authenticated=authenticated,
            automated=automated,
            too_long=too_long,
            attached=attached,
        )
        for policy in ("all", "first-post", "none")
        for known, authenticated, automated, too_long, attached in itertools.product((False, True), repeat=5)
    ]
    held = {d.reason for d in decisions if d.status == comments.HELD}
    assert held <= reasons, held - reasons  # a new reason needs its words in reasons.jinja
    for reason in reasons:
        body = render_mail(mlist, "held", **{**CONTEXT, "reason": reason})[1]
        shown = body.split("\n")[2].partition(":")[2].strip()
        assert shown and (shown != reason) == (language == "fr" or reason == "first post"), (reason, shown)

"""Comments end to end: real SMTP in, real git site repo, moderation CLI, broadcast at the sink."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import feedparser
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from listbridge.archive import publish
from listbridge.cli import cli
from listbridge.lists.context import ListContext
from listbridge.lists.subscriptions import subscribe
from listbridge.models import APPROVED, HELD, REJECTED, Comment, ModerationEvent
from listbridge.service import Service

from helpers import git, send, site_repo, wait_for

SLUG = "Comment-les-3hg-ont-réparé-le-CHATONS"
LIST = "bla@bla.example.org"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return site_repo(
        tmp_path / "site",
        {
            f"log/{SLUG}.gmi": "# Comment les 3hg ont réparé le CHATONS\n\nLe récit.\n",
            "log/autre-billet.gmi": "# Un autre billet\n",
        },
    )


def settings_for(make_settings, site: Path, **list_options):
    return make_settings(
        site={"repo": str(site), "base_url": "gemini://bla.example.org"},
        lists=[
            {
                "address": LIST,
                "title": "bla",
                "owner": "owner@example.org",
                "language": "fr",
                "moderation": "all",
                "authserv_id": "mx.bla.example.org",
                **list_options,
            }
        ],
    )


@pytest.fixture
def running(make_settings, site):
    services = []

    def start(**list_options) -> Service:
        svc = Service(settings_for(make_settings, site, **list_options))
        svc.start()
        services.append(svc)
        return svc

    yield start
    for svc in services:
        svc.stop()


def config_file(svc: Service, tmp_path: Path) -> Path:
    s = svc.settings
    m = s.lists[0]
    path = tmp_path / "lb.toml"
    path.write_text(
        f'[database]\nurl = "{s.database.url}"\n[relay]\nport = {s.relay.port}\n'
        f'[site]\nrepo = "{s.site.repo}"\nbase_url = "{s.site.base_url}"\n'
        f'[[lists]]\naddress = "{m.address}"\ntitle = "{m.title}"\nlanguage = "{m.language}"\n'
        f'moderation = "{m.moderation}"\nauthserv_id = "{m.authserv_id}"\n'
    )
    return path


def cli_run(config: Path, *args: str):
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    return result


def comments(svc: Service) -> list[Comment]:
    with svc.db.transaction() as session:
        return list(session.scalars(select(Comment).order_by(Comment.id)))


def add_subscribers(svc: Service, *addresses: str) -> None:
    with svc.db.transaction() as session:
        for a in addresses:
            subscribe(session, ListContext(svc.settings, svc.settings.lists[0]), a)


BODY = """Bravo pour la réparation !

=> gemini://evil.example/ un lien piégé
# Un faux titre

--=20
Carole, sa signature
"""


def test_held_comment_approved_published_and_broadcast(running, sink, tmp_path, site):
    svc = running()
    add_subscribers(svc, "ann@example.org", "bob@example.net")
    send(
        svc.settings.smtp.port,
        LIST,
        subject="Re: [bla] Comment les 3hg ont réparé le CHATONS ?",
        body=(
            "Bravo pour la réparation !\n\n=> gemini://evil.example/ piège\n# Un faux titre\n\n"
            "-- \nCarole, sa signature\n"
        ),
    )
    (held,) = comments(svc)
    assert (held.status, held.post_slug, held.reason) == (HELD, SLUG, "every comment is moderated")
    assert "signature" not in held.text

    config = config_file(svc, tmp_path)
    listed = json.loads(cli_run(config, "moderate", "list", "--json").output)
    assert [(r["id"], r["post"], r["name"], r["status"]) for r in listed] == [(held.id, SLUG, "Carole", HELD)]
    assert "Bravo pour la réparation" in cli_run(config, "moderate", "show", str(held.id)).output

    result = cli_run(config, "moderate", "approve", str(held.id))
    assert result.exit_code == 0, result.output
    assert git(site, "log", "-1", "--format=%an <%ae>|%s").strip() == f"listbridge <{LIST}>|Comment {held.id} on {SLUG}"
    page = (site / "log" / "commentaires" / f"{SLUG}.gmi").read_text()
    assert "## Carole, " in page
    assert "\\=> gemini://evil.example/ piège" in page and "\\# Un faux titre" in page
    assert "carole@example.net" not in page
    index = (site / "log" / "commentaires" / "index.gmi").read_text()
    assert f"=> {SLUG.replace('é', '%C3%A9')}.gmi " in index and "Comment les 3hg ont réparé le CHATONS (1)" in index
    feed = feedparser.parse((site / "log" / "commentaires" / "atom.xml").read_text())
    assert not feed.bozo, feed.bozo_exception
    assert [e.author for e in feed.entries] == ["Carole"]
    assert "piège" in feed.entries[0].summary

    for rcpt in ("ann@example.org", "bob@example.net"):
        (got,) = wait_for(functools.partial(sink.handler.to, rcpt))
        msg = got.message
        assert msg["Subject"] == "[bla] Comment les 3hg ont réparé le CHATONS"
        (author,) = msg["From"].addresses
        assert (author.display_name, author.addr_spec) == ("Carole via bla", LIST)
        assert msg["Reply-To"] == LIST
        assert msg["In-Reply-To"] == msg["References"] and msg["In-Reply-To"].endswith("@bla.example.org>")
        assert msg["List-Unsubscribe"].startswith("<mailto:bla+unsubscribe-")
        assert (
            "gemini://bla.example.org/log/commentaires/Comment-les-3hg-ont-r%C3%A9par%C3%A9-le-CHATONS.gmi"
            in msg.get_content()
        )
    with svc.db.transaction() as session:
        events = session.execute(select(ModerationEvent.action, ModerationEvent.actor)).all()
    assert [e[0] for e in events] == [APPROVED] and events[0][1]

    # A reply to the broadcast stays on its post, whatever its subject.
    broadcast_id = sink.handler.to("ann@example.org")[0].message["Message-ID"]
    send(
        svc.settings.smtp.port,
        LIST,
        subject="Re: une question",
        sender="ann@example.org",
        name="Ann",
        headers={"In-Reply-To": broadcast_id, "References": broadcast_id},
    )
    assert comments(svc)[-1].post_slug == SLUG


def test_unmatched_comment_needs_a_post(running, tmp_path, site):
    svc = running()
    send(svc.settings.smtp.port, LIST, subject="Bonjour à tous")
    (c,) = comments(svc)
    assert (c.status, c.post_slug, c.reason) == (HELD, None, "no matching post")
    config = config_file(svc, tmp_path)
    refused = cli_run(config, "moderate", "approve", str(c.id))
    assert refused.exit_code == 1 and refused.output.strip().endswith(
        "is not attached to a post: give one with --post SLUG."
    ), refused.output
    assert comments(svc)[0].status == HELD
    assert cli_run(config, "moderate", "approve", str(c.id), "--post", "un-autre-billet").exit_code == 0
    assert comments(svc)[0].post_slug == "autre-billet"
    assert (site / "log" / "commentaires" / "autre-billet.gmi").exists()


def auth(domain: str, authserv: str = "mx.bla.example.org") -> dict[str, str]:
    return {"Authentication-Results": f"{authserv}; dkim=pass header.d={domain}; dmarc=pass header.from={domain}"}


def test_first_post_policy_needs_a_known_and_authenticated_sender(running, site):
    svc = running(moderation="first-post")
    port = svc.settings.smtp.port
    send(port, LIST, subject=SLUG, headers=auth("example.net"))
    first = comments(svc)[-1]
    assert (first.status, first.reason) == (HELD, "first post")
    with svc.db.transaction() as session:
        session.get(Comment, first.id).status = APPROVED
    send(port, LIST, subject=SLUG, body="Encore moi.\n")  # From alone: never enough
    assert comments(svc)[-1].reason == "sender not authenticated (no DKIM/DMARC pass)"
    send(port, LIST, subject=SLUG, body="Forged.\n", headers=auth("example.net", authserv="evil.example"))
    assert comments(svc)[-1].status == HELD
    send(port, LIST, subject=SLUG, body="Encore moi, signée.\n", headers=auth("example.net"))
    assert comments(svc)[-1].status == APPROVED
    # The serve process publishes the auto-approved comment by itself.
    page = site / "log" / "commentaires" / f"{SLUG}.gmi"
    wait_for(lambda: page.exists() and "signée" in page.read_text())


def test_deny_allow_and_size_rules(running):
    svc = running(moderation="all", deny=["@spam.example"], allow=["@example.net"], max_comment_chars=50)
    port = svc.settings.smtp.port
    send(port, LIST, subject=SLUG, sender="x@spam.example")
    send(port, LIST, subject=SLUG, headers=auth("example.net"))
    send(port, LIST, subject=SLUG, body="long " * 30, headers=auth("example.net"))
    assert [(c.status, c.reason) for c in comments(svc)] == [
        (REJECTED, "sender is on the deny list"),
        (APPROVED, ""),
        (HELD, "too long"),
    ]


def test_attachments_are_counted_not_published(running, tmp_path, site):
    import smtplib
    from email.message import EmailMessage

    svc = running(moderation="none")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "Zoé <zoe@example.org>", LIST, SLUG
    msg.set_content("Voici une photo.\n")
    msg.add_attachment(b"\x89PNG fake", maintype="image", subtype="png", filename="photo.png")
    with smtplib.SMTP("127.0.0.1", svc.settings.smtp.port) as client:
        client.send_message(msg)
    page = site / "log" / "commentaires" / f"{SLUG}.gmi"
    wait_for(lambda: page.exists())
    assert "(1 pièce jointe non publiée)" in page.read_text() and "PNG" not in page.read_text()


def test_reject_with_notice_and_never_to_automatic_mail(running, sink, tmp_path):
    svc = running()
    send(svc.settings.smtp.port, LIST, subject=SLUG, sender="human@example.org")
    send(
        svc.settings.smtp.port,
        LIST,
        subject=SLUG,
        sender="robot@example.org",
        headers={"Auto-Submitted": "auto-replied"},
    )
    human, robot = comments(svc)
    config = config_file(svc, tmp_path)
    result = cli_run(config, "moderate", "reject", str(human.id), str(robot.id), "--reason", "hors sujet", "--notify")
    assert result.exit_code == 0, result.output
    assert f"rejected: {human.id} (author told)" in result.output and f"rejected: {robot.id}\n" in result.output
    (notice,) = wait_for(lambda: sink.handler.to("human@example.org"))
    assert "hors sujet" in notice.message.get_content()
    assert sink.handler.to("robot@example.org") == []
    assert [c.status for c in comments(svc)] == [REJECTED, REJECTED]


def test_forget_removes_a_person_everywhere(running, tmp_path, site):
    svc = running(moderation="none")
    add_subscribers(svc, "carole@example.net")
    send(svc.settings.smtp.port, LIST, subject=SLUG, body="Mon avis, signé Carole.\n")
    page = site / "log" / "commentaires" / f"{SLUG}.gmi"
    wait_for(lambda: page.exists() and "Mon avis" in page.read_text())
    config = config_file(svc, tmp_path)
    result = cli_run(config, "forget", "Carole@Example.net")
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "Mon avis" not in text and "retiré à la demande" in text and "Carole" not in text
    assert git(site, "status", "--porcelain", "log/commentaires") == ""  # committed
    assert json.loads(cli_run(config, "subscribers", "list", "--json").output) == []
    (c,) = comments(svc)
    assert (c.sender, c.display_name, c.text, c.raw) == ("", "", "", b"")


def test_rebuild_is_byte_identical_and_repairs(running, tmp_path, site):
    svc = running(moderation="none")
    send(svc.settings.smtp.port, LIST, subject=SLUG)
    page = site / "log" / "commentaires" / f"{SLUG}.gmi"
    wait_for(lambda: page.exists())
    wait_for(lambda: git(site, "status", "--porcelain") == "")
    head = git(site, "rev-parse", "HEAD")
    config = config_file(svc, tmp_path)
    assert "nothing to commit" in cli_run(config, "archive", "rebuild").output
    assert git(site, "rev-parse", "HEAD") == head
    before = page.read_bytes()
    page.unlink()
    (site / "log" / "commentaires" / "stale.gmi").write_text("old\n")
    assert "nothing to commit" in cli_run(config, "archive", "rebuild").output  # same as HEAD again
    assert page.read_bytes() == before and not (site / "log" / "commentaires" / "stale.gmi").exists()
    page.write_text("tampered\n")
    git(site, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-am", "tamper")
    assert "site commit" in cli_run(config, "archive", "rebuild").output
    assert page.read_bytes() == before and git(site, "status", "--porcelain") == ""


def test_push_to_the_remote_and_retry(make_settings, site, tmp_path):
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--bare", "--quiet", str(remote)], check=True)
    git(site, "remote", "add", "origin", str(remote))
    settings = make_settings(
        site={"repo": str(site), "push": True}, lists=[{"address": LIST, "moderation": "none", "language": "en"}]
    )
    svc = Service(settings)
    svc.start()
    try:
        remote.rename(tmp_path / "away.git")
        send(settings.smtp.port, LIST, subject=SLUG)
        wait_for(lambda: (site / "log" / "commentaires" / f"{SLUG}.gmi").exists())
        (tmp_path / "away.git").rename(remote)
        assert publish.publish_pending(svc.db, settings) == []  # nothing new: only the push is retried
        assert "Comment " in git(remote, "log", "--format=%s") and "Carole" not in git(remote, "log")
    finally:
        svc.stop()


def test_snippet(site, make_settings, tmp_path):
    svc_settings = settings_for(make_settings, site)
    config = tmp_path / "s.toml"
    config.write_text(f'[site]\nrepo = "{site}"\n[[lists]]\naddress = "{LIST}"\nlanguage = "fr"\n')
    out = cli_run(config, "snippet", "comment les 3hg ont repare le chatons").output.splitlines()
    assert out == [
        f"=> mailto:{LIST}?subject=Comment-les-3hg-ont-r%C3%A9par%C3%A9-le-CHATONS Envoyer un commentaire par courriel",
        "=> mailto:bla+subscribe@bla.example.org S'abonner pour recevoir les réponses",
        "=> /log/commentaires/ Lire les archives",
        "=> mailto:bla+unsubscribe@bla.example.org Se désabonner",
    ]
    assert svc_settings.lists[0].language == "fr"
    html = cli_run(config, "snippet", "--format", "html", "comment les 3hg ont repare le chatons").output
    assert html.splitlines() == [
        '<ul class="listbridge">',
        f'<li><a href="mailto:{LIST}?subject=Comment-les-3hg-ont-r%C3%A9par%C3%A9-le-CHATONS">'
        "Envoyer un commentaire par courriel</a></li>",
        '<li><a href="mailto:bla+subscribe@bla.example.org">S\'abonner pour recevoir les réponses</a></li>',
        '<li><a href="/log/commentaires/">Lire les archives</a></li>',  # no HTML pages: the capsule's
        '<li><a href="mailto:bla+unsubscribe@bla.example.org">Se désabonner</a></li>',
        "</ul>",
    ]


def test_interactive_moderation(running, tmp_path, site):
    svc = running()
    port = svc.settings.smtp.port
    send(port, LIST, subject=SLUG, sender="a@example.org", name="Alice", body="Premier avis.\n")
    send(port, LIST, subject="Sans rapport", sender="b@example.org", name="Bob", body="Deuxième avis.\n")
    send(port, LIST, subject=SLUG, sender="c@example.org", name="Chloé", body="Troisième avis.\n")
    send(port, LIST, subject=SLUG, sender="d@example.org", name="Dan", body="Quatrième avis.\n")
    config = config_file(svc, tmp_path)
    # Alice: approve. Bob: approve, attached to a post by hand. Chloé: reject, tell her. Dan: quit.
    keys = "a\na\nautre-billet\nr\nhors sujet\ny\nq\n"
    result = CliRunner().invoke(cli, ["--config", str(config), "moderate"], input=keys, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "[1/4]" in result.output and "Premier avis." in result.output and "No post matched" in result.output
    states = [(c.display_name, c.status, c.post_slug) for c in comments(svc)]
    assert states == [
        ("Alice", APPROVED, SLUG),
        ("Bob", APPROVED, "autre-billet"),
        ("Chloé", REJECTED, SLUG),
        ("Dan", HELD, SLUG),
    ]
    assert (site / "log" / "commentaires" / "autre-billet.gmi").exists()
    assert "Nothing is waiting" not in result.output
    again = CliRunner().invoke(cli, ["--config", str(config), "moderate"], input="s\n", catch_exceptions=False)
    assert "[1/1]" in again.output and comments(svc)[-1].status == HELD


def test_forget_with_delete_drops_the_comments(running, tmp_path, site):
    svc = running(moderation="none")
    send(svc.settings.smtp.port, LIST, subject=SLUG, body="À effacer.\n")
    send(svc.settings.smtp.port, LIST, subject=SLUG, sender="other@example.org", name="Autre", body="Je reste.\n")
    page = site / "log" / "commentaires" / f"{SLUG}.gmi"
    wait_for(lambda: page.exists() and "Je reste." in page.read_text())
    result = cli_run(config_file(svc, tmp_path), "forget", "carole@example.net", "--delete")
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "À effacer." not in text and "retiré" not in text and "Je reste." in text
    assert [c.display_name for c in comments(svc)] == ["Autre"]
    with svc.db.transaction() as session:
        (event,) = session.scalars(select(ModerationEvent).where(ModerationEvent.action == "forget"))
    assert "carole" not in event.detail and event.detail.startswith("sha256:")

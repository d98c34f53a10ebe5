"""A status-only list ([[lists]] kind = "status"), over real SMTP to a real serve: it takes
subscriptions (double opt-in), its bare address reaches the owner and is never a comment, it
has no comment folder to collide over, and its subscribers get outage notices and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from listbridge.cli import cli
from listbridge.config import ConfigError
from listbridge.models import Comment, Subscriber
from listbridge.outage import incidents
from listbridge.service import Service

from helpers import db_count, send, site_repo, wait_for

BLOG = "bla@bla.example.org"
STATUS = "etat@bla.example.org"
OUTSIDE = "zoe@elsewhere.example"
READER = "reader@example.net"


def test_a_status_list_takes_subscriptions_and_only_notices(make_settings, tmp_path: Path, sink):
    site = site_repo(tmp_path / "site", {"log/un-billet.gmi": "# Un billet\n\nTexte.\n"})
    settings = make_settings(
        site={"repo": str(site)},
        lists=[
            {"address": BLOG, "title": "bla", "owner": "owner@example.org", "moderation": "none"},
            {"address": STATUS, "title": "état", "owner": "owner@example.org", "kind": "status"},
        ],
    )
    assert settings.lists[1].comments_dir == ""  # none, so none shared with bla's
    svc = Service(settings)
    svc.start()
    try:
        send(settings.smtp.port, "etat+subscribe@bla.example.org", sender=OUTSIDE, subject="subscribe")
        (request,) = wait_for(lambda: sink.handler.to(OUTSIDE))
        confirm = request.message["Reply-To"]
        assert re.fullmatch(r"etat\+confirm-[a-z2-7]+@bla\.example\.org", confirm)
        send(settings.smtp.port, confirm, sender=OUTSIDE, subject="Re: confirm")
        wait_for(lambda: db_count(svc.db, Subscriber, Subscriber.list_address == STATUS) == 1)
        send(settings.smtp.port, "bla+subscribe@bla.example.org", sender=READER, subject="subscribe")
        (blog_request,) = wait_for(lambda: sink.handler.to(READER))
        send(settings.smtp.port, blog_request.message["Reply-To"], sender=READER, subject="Re: confirm")
        wait_for(lambda: db_count(svc.db, Subscriber, Subscriber.list_address == BLOG) == 1)

        # The bare address: the owner gets it, nothing is held or published.
        send(settings.smtp.port, STATUS, sender=READER, subject="Re: Un billet", body="Is it down?\n")
        wait_for(lambda: [r for r in sink.handler.to("owner@example.org") if "Un billet" in r.message["Subject"]])
        assert db_count(svc.db, Comment) == 0
        # A comment on the blog reaches the blog's subscriber only.
        send(settings.smtp.port, BLOG, sender=READER, subject="Re: Un billet", body="Bravo.\n")
        wait_for(lambda: [r for r in sink.handler.to(READER) if "[bla] Un billet" in r.message["Subject"]])
        with svc.db.transaction() as session:
            incidents.declare(session, settings, "power cut", actor="test")
        svc.wakeup.set()
        wait_for(lambda: [r for r in sink.handler.to(OUTSIDE) if "power cut" in r.message["Subject"]])
    finally:
        svc.stop()
    subjects = [r.message["Subject"] for r in sink.handler.to(OUTSIDE)]
    assert not [s for s in subjects if "Un billet" in s], subjects  # notices, and nothing else


def test_the_snippet_of_a_status_list_offers_its_notices(tmp_path: Path):
    config = tmp_path / "s.toml"
    config.write_text(f'[[lists]]\naddress = "{BLOG}"\n[[lists]]\naddress = "{STATUS}"\nkind = "status"\n')
    out = CliRunner().invoke(cli, ["--config", str(config), "snippet", "--list", STATUS]).output
    assert "=> mailto:etat+subscribe@bla.example.org Be told by mail when our services are down" in out
    html = CliRunner().invoke(cli, ["--config", str(config), "snippet", "--list", STATUS, "--format", "html"]).output
    assert '<a href="mailto:etat+unsubscribe@bla.example.org">Stop these notices</a>' in html
    lost = CliRunner().invoke(cli, ["--config", str(config), "snippet", "--list", BLOG])
    assert lost.exit_code == 2 and "give the POST" in lost.output


def test_a_kind_that_is_not_one_is_refused(make_settings):
    with pytest.raises(ConfigError, match="kind"):
        make_settings(lists=[{"address": STATUS, "kind": "news"}])

"""The maintainer CLI, driven with click's CliRunner against a real database and relay sink."""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from listbridge.cli import cli
from listbridge.config import build_settings
from listbridge.inbound.parse import parse
from listbridge.models import utcnow

from helpers import git, send


@pytest.fixture
def config(tmp_path: Path, db_url: str, sink) -> Path:
    path = tmp_path / "listbridge.toml"
    path.write_text(
        f"""
[database]
url = "{db_url}"
[relay]
host = "127.0.0.1"
port = {sink.port}
connections = 1
[[lists]]
address = "bla@bla.example.org"
title = "bla"
language = "fr"
""",
        encoding="utf-8",
    )
    return path


def run(config: Path, *args: str, input: str | None = None):
    result = CliRunner().invoke(cli, ["--config", str(config), *args], input=input, catch_exceptions=False)
    return result


def listed(config: Path) -> list[dict]:
    result = run(config, "subscribers", "list", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_add_list_remove(config):
    result = run(config, "subscribers", "add", "Carole Durand <carole@example.net>", "bob@EXAMPLE.org")
    assert result.exit_code == 0, result.output
    assert [(s["address"], s["name"]) for s in listed(config)] == [
        ("bob@example.org", ""),
        ("carole@example.net", "Carole Durand"),
    ]
    assert "already subscribed: bob@example.org" in run(config, "subscribers", "add", "bob@example.org").output
    result = run(config, "subscribers", "remove", "bob@example.org", "nobody@example.org")
    assert "removed: bob@example.org" in result.output and "not subscribed: nobody@example.org" in result.output
    assert [s["address"] for s in listed(config)] == ["carole@example.net"]


def test_a_bad_address_changes_nothing(config):
    result = run(config, "subscribers", "add", "good@example.org", "not an address")
    assert result.exit_code != 0
    assert "not an address" in result.output
    assert listed(config) == []


def test_import_file_and_export_round_trip(config, tmp_path):
    source = tmp_path / "people.txt"
    source.write_text(
        "# readers\nann@example.org\nÉlodie Martin <elodie@example.fr>\n\nann@example.org\n", encoding="utf-8"
    )
    result = run(config, "subscribers", "import", str(source))
    assert result.exit_code == 0, result.output
    assert "2 added, 1 already subscribed" in result.output
    exported = run(config, "subscribers", "export").output.splitlines()
    assert exported == ["ann@example.org", "Élodie Martin <elodie@example.fr>"]
    # The export is the import format: feeding it back adds nobody.
    again = tmp_path / "again.txt"
    again.write_text("\n".join(exported + ['"Dupont, Jean" <jean@example.fr>']), encoding="utf-8")
    assert "1 added, 2 already subscribed" in run(config, "subscribers", "import", str(again)).output
    assert '"Dupont, Jean" <jean@example.fr>' in run(config, "subscribers", "export").output


def test_import_stops_on_a_bad_line_before_any_change(config, tmp_path):
    source = tmp_path / "people.txt"
    source.write_text("ann@example.org\nthis is no address\n", encoding="utf-8")
    result = run(config, "subscribers", "import", str(source))
    assert result.exit_code != 0
    assert listed(config) == []


def test_import_an_mlmmj_list(config, tmp_path):
    mlmmj = tmp_path / "mlmmj" / "bla"
    (mlmmj / "subscribers.d").mkdir(parents=True)
    (mlmmj / "subscribers.d" / "a").write_text("ann@example.org\nalex@example.org\n")
    (mlmmj / "subscribers.d" / "z").write_text("zoe@example.org\n")
    result = run(config, "subscribers", "import", str(mlmmj))
    assert result.exit_code == 0, result.output
    assert sorted(s["address"] for s in listed(config)) == ["alex@example.org", "ann@example.org", "zoe@example.org"]
    not_mlmmj = tmp_path / "empty"
    not_mlmmj.mkdir()
    assert run(config, "subscribers", "import", str(not_mlmmj)).exit_code != 0


def test_queue_list_and_flush(config, sink, db_url):
    settings = build_settings(tomllib.loads(config.read_text()))
    from listbridge.db import Database
    from listbridge.lists.context import ListContext
    from listbridge.lists.subscriptions import request

    db = Database(db_url)
    db.upgrade()
    with db.transaction() as session:
        request(session, ListContext(settings, settings.lists[0]), "subscribe", "ann@example.org", "Ann")
    queued = json.loads(run(config, "queue", "list", "--json").output)
    assert [(q["kind"], q["queued"], q["sent"]) for q in queued] == [("confirm_subscribe", 1, 0)]
    result = run(config, "queue", "flush")
    assert result.exit_code == 0, result.output
    assert "1 delivered or failed, 0 still queued" in result.output
    assert json.loads(run(config, "queue", "list", "--json").output) == []
    done = json.loads(run(config, "queue", "list", "--all", "--json").output)
    assert done[0]["sent"] == 1
    (received,) = sink.handler.to("ann@example.org")
    assert "Confirmez" in received.message["Subject"]  # the list is French
    db.dispose()


def test_moderate_list_shows_held_posts(make_settings, tmp_path):
    from listbridge.service import Service

    settings = make_settings()
    service = Service(settings)
    service.start()
    try:
        send(settings.smtp.port, "bla@bla.example.org", subject="Comment les 3hg ont réparé le CHATONS ?")
    finally:
        service.stop()
    config = tmp_path / "c.toml"
    config.write_text(f'[database]\nurl = "{settings.database.url}"\n[[lists]]\naddress = "bla@bla.example.org"\n')
    rows = json.loads(run(config, "moderate", "list", "--json").output)
    assert [(r["sender"], r["name"], r["subject"]) for r in rows] == [
        ("carole@example.net", "Carole", "Comment les 3hg ont réparé le CHATONS ?")
    ]
    assert rows[0]["message_id"].endswith("@example.net>")


def test_init_writes_a_file_that_loads_back(tmp_path):
    target = tmp_path / "listbridge.toml"
    result = CliRunner().invoke(cli, ["init", str(target)])
    assert result.exit_code == 0, result.output
    settings = build_settings(tomllib.loads(target.read_text()))
    assert settings == build_settings({})
    again = CliRunner().invoke(cli, ["init", str(target)])
    assert again.exit_code != 0 and "--force" in again.output


def test_db_upgrade(config, db_url):
    from listbridge.db import Database

    result = run(config, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert Database(db_url).is_current()


def test_several_lists_need_list_option(tmp_path, db_url):
    config = tmp_path / "two.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n[[lists]]\naddress = "a@x.org"\n[[lists]]\naddress = "b@x.org"\n'
        'comments_dir = "log/b"\n'
    )
    result = CliRunner().invoke(cli, ["--config", str(config), "subscribers", "add", "z@y.org"])
    assert result.exit_code != 0 and "--list" in result.output
    result = CliRunner().invoke(cli, ["--config", str(config), "subscribers", "add", "--list", "b@x.org", "z@y.org"])
    assert result.exit_code == 0, result.output
    rows = json.loads(CliRunner().invoke(cli, ["--config", str(config), "subscribers", "list", "--json"]).output)
    assert [(r["list"], r["address"]) for r in rows] == [("b@x.org", "z@y.org")]


def test_archive_push_on_a_new_site_repo_is_one_sentence(config, tmp_path):
    """A site repo with no commit and no remote yet, as `serve` creates it on the defaults."""
    site = tmp_path / "fresh-site"
    git(tmp_path, "init", "--quiet", str(site))
    with_site = config.read_text(encoding="utf-8") + f'[site]\nrepo = "{site}"\n'
    config.write_text(with_site, encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(config), "archive", "push"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: the site repo {site} has no remote to push to (git remote add origin URL)."
    ]
    git(tmp_path, "init", "--quiet", "--bare", str(tmp_path / "remote.git"))
    git(site, "remote", "add", "origin", str(tmp_path / "remote.git"))
    pushed = run(config, "archive", "push")
    assert pushed.exit_code == 0 and pushed.output == "pushed 0 commit(s)\n", pushed.output


def test_subscribers_list_shows_delivery_and_enable_turns_it_on(config, sink, db_url):
    """A subscriber turned off by bounces shows so in `subscribers list`, its bounced mail in
    `queue list --all`; `subscribers enable` turns delivery on and tells them."""
    from sqlalchemy import select

    from listbridge.db import Database
    from listbridge.lists import bounces
    from listbridge.lists.context import ListContext
    from listbridge.lists.context import send as queue_mail
    from listbridge.lists.subscriptions import subscribe
    from listbridge.models import OutboxRecipient
    from listbridge.outbound import outbox, verp

    settings = build_settings(tomllib.loads(config.read_text()))
    ctx = ListContext(settings, settings.lists[0])
    db = Database(db_url)
    db.upgrade()
    with db.transaction() as session:
        subscribe(session, ctx, "ann@example.org")
        subscribe(session, ctx, "bob@example.org")
        queue_mail(session, ctx, "help", "ann@example.org")
    assert run(config, "queue", "flush").exit_code == 0
    report = (
        b"From: MAILER-DAEMON@mx.example.org\r\nTo: bla+bounces@bla.example.org\r\nSubject: Undelivered\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nLost.\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; ann@example.org\r\n"
        b"Action: failed\r\nStatus: 5.1.1\r\n\r\n--B--\r\n"
    )
    with db.transaction() as session:
        row = session.scalars(select(OutboxRecipient)).one()
        token = verp.encode(row.id, outbox.verp_key(session))
        assert bounces.received(session, ctx, parse(report, "", True), token).endswith("score 1")
        for day in range(1, settings.bounces.threshold):  # the next ones, a day apart
            bounces.count(session, ctx, "ann@example.org", utcnow() + dt.timedelta(days=day))
    rows = {s["address"]: (s["delivery"], s["bounces"]) for s in listed(config)}
    assert rows == {"ann@example.org": ("off (bounces)", 5), "bob@example.org": ("on", 0)}
    text = run(config, "subscribers", "list").output
    assert "off (bounces)" in text
    (help_line,) = [
        q for q in json.loads(run(config, "queue", "list", "--all", "--json").output) if q["kind"] == "help"
    ]
    assert (help_line["sent"], help_line["bounced"]) == (1, 1)

    result = run(config, "subscribers", "enable", "ann@example.org", "carl@example.org")
    assert result.exit_code == 0, result.output
    assert "ann@example.org: delivery on again" in result.output and "carl@example.org: not subscribed" in result.output
    assert {s["address"]: s["delivery"] for s in listed(config)}["ann@example.org"] == "on"
    assert run(config, "queue", "flush").exit_code == 0
    assert any("de nouveau" in r.message["Subject"] for r in sink.handler.to("ann@example.org"))
    db.dispose()

"""RFC 8058 one-click unsubscribe over real HTTP to a real `serve`, the sink as relay: the
headers and footer of every mail to one subscriber, POST (at once, with the goodbye mail),
GET (changes nothing), unknown and spent tokens, bodies too large or malformed."""

from __future__ import annotations

import concurrent.futures
import http.client
import re
import socket
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path

import html5lib
import pytest
from sqlalchemy import select

from listbridge.config import ConfigError, ConfigWarning, Settings, build_settings
from listbridge.lists.context import ListContext
from listbridge.lists.subscriptions import subscribe
from listbridge.models import Subscriber
from listbridge.service import ListenError, Service

from helpers import Received, Sink, free_port, send, site_repo, wait_for

LIST = "bla@bla.example.org"
READER = "reader@example.net"
OTHER = "other@example.org"
ONE_CLICK = "List-Unsubscribe=One-Click"
URL = re.compile(r"<(http://127\.0\.0\.1:\d+/unsubscribe/([a-z2-7]+))>, <mailto:bla\+unsubscribe-\2@bla\.example\.org>")


@pytest.fixture
def running(make_settings, tmp_path: Path, request) -> Iterator[tuple[Settings, Service]]:
    site = site_repo(tmp_path / "site", {"log/un-billet.gmi": "# Un billet\n\nTexte.\n"})
    port = free_port()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)  # http, for loopback
        settings = make_settings(
            site={"repo": str(site), "base_url": "gemini://bla.example.org"},
            lists=[
                {
                    "address": LIST,
                    "title": "bla",
                    "owner": "owner@example.org",
                    "moderation": "none",
                    "language": getattr(request, "param", "en"),
                }
            ],
            web={"listen": f"127.0.0.1:{port}", "base_url": f"http://127.0.0.1:{port}"},
        )
    svc = Service(settings)
    svc.start()
    with svc.db.transaction() as session:
        ctx = ListContext(settings, settings.lists[0])
        subscribe(session, ctx, READER, name="Reader", welcome=True)
        subscribe(session, ctx, OTHER)
    svc.wakeup.set()
    yield settings, svc
    svc.stop()


def request(settings: Settings, method: str, path: str, body: bytes | None = None, **headers: str):
    """(status, headers, text) of one real HTTP request to the listener."""
    host, port = settings.web.address()
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


def post(settings: Settings, path: str, body: bytes = ONE_CLICK.encode()):
    return request(settings, "POST", path, body, Content_Type="application/x-www-form-urlencoded")


def subscribed(svc: Service) -> list[str]:
    with svc.db.transaction() as session:
        return list(session.scalars(select(Subscriber.address).order_by(Subscriber.address)))


def broadcast(settings: Settings, sink: Sink) -> Received:
    send(settings.smtp.port, LIST, subject="Re: Un billet", body="Merci.\n")
    (mail,) = wait_for(lambda: [r for r in sink.handler.to(READER) if "Un billet" in r.message["Subject"]])
    return mail


def one_click_header(mail: Received) -> re.Match[str]:
    """The List-Unsubscribe header's URL and token (the header may be folded)."""
    value = " ".join(str(mail.message["List-Unsubscribe"]).split())
    found = URL.fullmatch(value)
    assert found, value
    return found


def valid_html(text: str) -> None:
    parser = html5lib.HTMLParser(strict=True)
    parser.parse(text)
    assert not parser.errors, parser.errors


@pytest.mark.parametrize(
    ("running", "footer"),
    [("en", "One click to leave the list: "), ("fr", "Se désabonner en un clic : ")],
    indirect=["running"],
)
def test_a_broadcast_carries_the_one_click_headers_and_link(running, sink: Sink, footer: str):
    """In French the body is quoted-printable, its lines broken: the link is whole all the same."""
    settings, svc = running
    mail = broadcast(settings, sink)
    found = one_click_header(mail)
    assert mail.message["List-Unsubscribe-Post"] == ONE_CLICK
    assert footer + found.group(1) in mail.message.get_content()
    with svc.db.transaction() as session:
        tokens = {address: token for address, token in session.execute(select(Subscriber.address, Subscriber.token))}
    assert found.group(2) == tokens[READER]
    other = wait_for(lambda: [r for r in sink.handler.to(OTHER) if "Un billet" in r.message["Subject"]])[0]
    assert tokens[OTHER] in other.message.get_content() and tokens[READER] not in other.message.get_content()


def test_mail_to_one_subscriber_carries_their_headers(running, sink: Sink):
    settings, svc = running
    (welcome,) = wait_for(lambda: sink.handler.to(READER))
    one_click_header(welcome)
    assert welcome.message["List-Unsubscribe-Post"] == ONE_CLICK
    send(settings.smtp.port, "bla+subscribe@bla.example.org", sender="new@example.org")
    (confirm,) = wait_for(lambda: sink.handler.to("new@example.org"))
    assert "List-Unsubscribe-Post" not in confirm.message  # not a subscriber: no token to give


def test_a_one_click_post_unsubscribes_at_once_and_says_so(running, sink: Sink):
    settings, svc = running
    path = urllib.parse.urlsplit(one_click_header(broadcast(settings, sink)).group(1)).path
    status, headers, text = post(settings, path)
    assert status == 200 and "You left bla" in text, text
    assert headers["Cache-Control"] == "no-store" and "Set-Cookie" not in headers
    valid_html(text)
    assert subscribed(svc) == [OTHER]
    wait_for(lambda: [r for r in sink.handler.to(READER) if "You left" in r.message["Subject"]])
    status, _, text = post(settings, path)  # again: done already, nothing more sent
    assert status == 200 and "Already done" in text
    assert request(settings, "GET", path)[0] == 200


def test_a_get_changes_nothing_and_offers_the_button(running, sink: Sink):
    settings, svc = running
    path = urllib.parse.urlsplit(one_click_header(broadcast(settings, sink)).group(1)).path
    status, _, text = request(settings, "GET", path)
    assert status == 200 and '<form method="post"' in text and f'value="{ONE_CLICK.split("=")[1]}"' in text
    valid_html(text)
    assert subscribed(svc) == [OTHER, READER]


def test_unknown_tokens_and_bad_requests(running, sink: Sink):
    settings, svc = running
    assert request(settings, "GET", "/unsubscribe/" + "a" * 26)[0] == 404
    assert post(settings, "/unsubscribe/" + "a" * 26)[0] == 404
    assert request(settings, "GET", "/unsubscribe/Not-A-Token", Accept_Language="fr-FR")[2].count("Lien inconnu") == 1
    assert request(settings, "GET", "/elsewhere")[0] == 404
    token = one_click_header(broadcast(settings, sink)).group(2)
    path = f"/unsubscribe/{token}"
    assert post(settings, path, b"List-Unsubscribe=Yes")[0] == 400
    assert request(settings, "POST", path, ONE_CLICK.encode(), Content_Type="text/plain")[0] == 415
    assert post(settings, path, ONE_CLICK.encode() + b"&pad=" + b"x" * 2000)[0] == 413
    assert request(settings, "PUT", path, ONE_CLICK.encode())[0] == 405
    assert subscribed(svc) == [OTHER, READER]  # none of them unsubscribed
    # The SMTP side is untouched by all of it.
    send(settings.smtp.port, LIST, subject="Re: Un billet", body="Encore.\n")
    wait_for(lambda: len([r for r in sink.handler.to(READER) if "Un billet" in r.message["Subject"]]) == 2)


def test_a_web_port_taken_is_one_sentence(make_settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(web={"listen": f"127.0.0.1:{port}"})
        svc = Service(settings)
        with pytest.raises(ListenError, match=rf"^cannot listen on 127\.0\.0\.1:{port} \(\[web\] listen\): .+\.$"):
            svc.start()
    # The SMTP listener it had started is closed again: its port can be bound.
    with socket.socket() as again:
        again.bind(("127.0.0.1", settings.smtp.port))


def test_a_comment_cannot_collect_the_readers_tokens(running, sink: Sink):
    """The stand-in for each reader's token is random per mail: a commenter who writes the
    old fixed one, or anything else, gets it back unchanged, and no reader's token."""
    settings, svc = running
    bait = "listbridgetokenplaceholder"
    send(
        settings.smtp.port,
        LIST,
        subject="Re: Un billet",
        sender="mallory@example.org",
        body=f"See https://evil.example/?t={bait}\n",
    )
    (mail,) = wait_for(lambda: [r for r in sink.handler.to(READER) if "Un billet" in r.message["Subject"]])
    token = one_click_header(mail).group(2)
    assert bait in mail.message.get_content()
    assert mail.data.count(token.encode()) == 3  # List-Unsubscribe's two, the footer's one
    assert mail.message.get_content().count(token) == 1


def test_a_quoted_footer_does_not_publish_a_readers_token(running, sink: Sink):
    settings, svc = running
    url = one_click_header(broadcast(settings, sink)).group(1)
    send(
        settings.smtp.port,
        LIST,
        subject="Re: Un billet",
        sender=READER,
        body=f"> One click to leave the list: {url}\nSo true.\n",
    )
    wait_for(lambda: len([r for r in sink.handler.to(OTHER) if "Un billet" in r.message["Subject"]]) == 2)
    second = [r for r in sink.handler.to(OTHER) if "Un billet" in r.message["Subject"]][1]
    token = url.rsplit("/", 1)[1]
    assert token not in second.message.get_content() and "/unsubscribe/…" in second.message.get_content()


@pytest.mark.parametrize("body", [b"\xff=\xfe", b"List-Unsubscribe=One-Click&x=%ff%fe"])
def test_a_body_in_no_charset_is_a_400(running, body: bytes):
    settings, svc = running
    with svc.db.transaction() as session:
        token = session.scalars(select(Subscriber.token).where(Subscriber.address == READER)).one()
    path = f"/unsubscribe/{token}"
    for content_type in ("application/x-www-form-urlencoded; charset=bogus", "multipart/form-data"):
        assert request(settings, "POST", path, body, Content_Type=content_type)[0] == 400
    assert post(settings, path, body)[0] in (200, 400)
    status = request(settings, "POST", path, b"--x\r\n\r\n", Content_Type="multipart/form-data; boundary=y")[0]
    assert status == 400


def test_two_clicks_at_once_unsubscribe_once(running, sink: Sink):
    settings, svc = running
    with svc.db.transaction() as session:
        token = session.scalars(select(Subscriber.token).where(Subscriber.address == READER)).one()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: post(settings, f"/unsubscribe/{token}"), range(6)))
    assert [a[0] for a in answers] == [200] * 6
    assert sum("You left bla" in a[2] for a in answers) == 1, [a[2][-200:] for a in answers]
    wait_for(lambda: [r for r in sink.handler.to(READER) if "You left" in r.message["Subject"]])
    time.sleep(0.5)
    assert len([r for r in sink.handler.to(READER) if "You left" in r.message["Subject"]]) == 1


def test_a_long_base_url_stays_one_unfolded_header(make_settings, sink: Sink, tmp_path: Path):
    """The email package would fold a long URL into RFC 2047 words: the header is written raw."""
    base = "https://lists.bla.example.org/listbridge/one-click-unsubscribe"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)  # no listen: links answered elsewhere
        settings = make_settings(web={"base_url": base})
    svc = Service(settings)
    svc.start()
    try:
        with svc.db.transaction() as session:
            subscribe(session, ListContext(settings, settings.lists[0]), READER, welcome=True)
        svc.wakeup.set()
        (welcome,) = wait_for(lambda: sink.handler.to(READER))
        raw = welcome.data.split(b"\r\n\r\n", 1)[0]
        assert re.search(
            rb"^List-Unsubscribe: <" + re.escape(base.encode()) + rb"/unsubscribe/[a-z2-7]{26}>, <mailto:", raw, re.M
        )
        assert b"=?" not in raw.split(b"List-Unsubscribe:", 1)[1].split(b"\r\n", 1)[0]
        assert f"{base}/unsubscribe/" in welcome.message.get_content()  # its footer
    finally:
        svc.stop()


@pytest.mark.parametrize(
    ("web", "error"),
    [
        ({"listen": "8080"}, "listen must be HOST:PORT"),
        ({"base_url": "ftp://lists.example.org"}, "base_url must be an https:// URL"),
        ({"base_url": "https://lists.example.org/?a=1"}, "base_url must be an https:// URL"),
        ({"base_url": "https://listes.exemple.fr/désabonner"}, "base_url must be an https:// URL"),
    ],
)
def test_web_settings_are_checked(web, error):
    with pytest.raises(ConfigError, match=re.escape(error)):
        build_settings({"web": web})


def test_http_and_a_missing_listener_are_warned_of():
    with pytest.warns(ConfigWarning, match="is http"):
        build_settings({"web": {"listen": "127.0.0.1:8080", "base_url": "http://127.0.0.1:8080"}})
    with pytest.warns(ConfigWarning, match="listen is empty"):
        build_settings({"web": {"base_url": "https://lists.example.org"}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build_settings({"web": {"listen": "127.0.0.1:8080", "base_url": "https://l.example/"}}).web.base_url == (
            "https://l.example"
        )

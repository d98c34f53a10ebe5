"""One hostile message costs only itself: over real SMTP, with innocent mail in flight beside it,
the innocent mail is answered 250 in its usual time and the poison 250 (held) or 5xx, never 451."""

from __future__ import annotations

import dataclasses
import email.utils
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from listbridge.inbound import dispatch
from listbridge.inbound import parse as parse_module
from listbridge.inbound.parse import parse
from listbridge.models import Comment

from helpers import database_write_lock

LIST = "bla@bla.example.org"
# Nested comments the email package's address parser recurses into, until RecursionError.
DEEP_FROM = "(" * 500 + "x@example.net"


def _parser_recurses() -> bool:
    """Whether this Python's address parser raises on DEEP_FROM. Older ones (3.11.2, Debian's
    CI Python) read it as no address at all, so there it is ordinary mail, stored with 250."""
    try:
        email.utils.getaddresses([DEEP_FROM])
    except RecursionError:
        return True
    return False


POISONOUS = _parser_recurses()


def raw_message(
    subject: str,
    sender: str = "Carole <carole@example.net>",
    content_type: str = "text/plain",
    body: str = "Hello.\r\n",
) -> bytes:
    return (
        f"From: {sender}\r\nTo: {LIST}\r\nSubject: {subject}\r\nMessage-ID: <{time.time_ns()}@example.net>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: {content_type}; charset=utf-8\r\n\r\n{body}"
    ).encode()


def transaction(port: int, data: bytes, timeout: float = 10) -> tuple[int, str]:
    """One SMTP transaction to the list; the DATA reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as client:
        client.ehlo()
        assert client.mail("carole@example.net")[0] == 250
        assert client.rcpt(LIST)[0] == 250
        code, msg = client.data(data)
        return code, msg.decode()


def in_thread(
    port: int, data: bytes, replies: dict[str, tuple[int, str] | str], key: str, timeout: float = 10
) -> threading.Thread:
    def run() -> None:
        try:
            replies[key] = transaction(port, data, timeout)
        except (OSError, smtplib.SMTPException) as exc:
            replies[key] = f"no reply: {exc!r}"

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def subjects(db) -> list[str]:
    with db.transaction() as session:
        return sorted(session.scalars(select(Comment.subject)))


def test_a_from_header_the_parser_recurses_on_costs_only_its_own_message(service):
    """Poison and innocent messages in one batch: the poison gets 554, the others 250."""
    port = service.settings.smtp.port
    replies: dict[str, tuple[int, str] | str] = {}
    with database_write_lock(service.db):
        threads = [in_thread(port, raw_message("first"), replies, "first", timeout=60)]
        time.sleep(0.5)  # the first batch is now waiting for the lock in the store process
        threads += [in_thread(port, raw_message("poison", sender=DEEP_FROM), replies, "poison", timeout=60)]
        threads += [
            in_thread(port, raw_message(f"innocent {n}"), replies, f"innocent {n}", timeout=60) for n in range(4)
        ]
        time.sleep(1.0)  # all of them are queued for the next batch
    for thread in threads:
        thread.join(30)
    poison = replies.pop("poison")
    assert isinstance(poison, tuple) and poison[0] == (554 if POISONOUS else 250), poison
    assert all(isinstance(r, tuple) and r[0] == 250 for r in replies.values()), replies
    innocent = ["first", "innocent 0", "innocent 1", "innocent 2", "innocent 3"]
    assert subjects(service.db) == (innocent if POISONOUS else sorted([*innocent, "poison"]))


def test_unclosed_heads_do_not_hold_up_the_mail_beside_them(service):
    """600 KB of "<head " in an HTML body (within the 1 MB limit) once held the store process
    for minutes; the mail sent beside it waited as long."""
    port = service.settings.smtp.port
    replies: dict[str, tuple[int, str] | str] = {}
    poison = in_thread(
        port,
        raw_message("poison", content_type="text/html", body=("<head " * 60 + "\r\n") * 1600),
        replies,
        "poison",
        timeout=60,
    )
    time.sleep(0.2)
    started = time.monotonic()
    innocent = [in_thread(port, raw_message(f"innocent {n}"), replies, f"innocent {n}") for n in range(3)]
    for thread in innocent:
        thread.join(30)
    assert time.monotonic() - started < 10
    poison.join(30)
    assert all(isinstance(r, tuple) and r[0] == 250 for r in replies.values()), replies
    assert subjects(service.db) == ["innocent 0", "innocent 1", "innocent 2", "poison"]


def test_a_message_over_the_time_limit_is_refused_alone(make_settings, db, monkeypatch, caplog):
    """The bound itself, on a message that takes a fraction of a second to parse and a limit
    below it; the others of its batch are stored."""
    monkeypatch.setattr(dispatch, "PARSE_SECONDS", 0.02)
    settings = make_settings()
    many_parts = "".join("--B\r\nContent-Type: text/html\r\n\r\n<p>x\r\n" for _ in range(20_000)) + "--B--\r\n"
    slow = raw_message("slow", content_type='multipart/alternative; boundary="B"', body=many_parts)
    batch = [
        dispatch.Received(raw_message("before"), "carole@example.net", (LIST,)),
        dispatch.Received(slow, "slow@example.net", (LIST, LIST)),
        dispatch.Received(raw_message("after"), "carole@example.net", (LIST,)),
    ]
    replies = dispatch.accept_many(db, settings, batch, lambda: {}).replies
    assert [[r.code for r in rs] for rs in replies] == [[250], [554, 554], [250]]
    assert "slow@example.net" in caplog.text and "not read within" in caplog.text
    assert subjects(db) == ["after", "before"]


# A second or more of mail-parser's time, under PARSE_SECONDS and 1 MB: slow, not refused.
def many_parts(count: int) -> str:
    """A multipart/mixed body of `count` tiny text parts, boundary "b": slow for mail-parser."""
    return "".join("--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(count)) + "--b--\r\n"


SLOW_BODY = many_parts(28_000)


def test_slow_messages_sent_together_do_not_add_up_for_the_mail_beside_them(service):
    """Each slow message is within the bound, so none is refused; yet their times must not
    add up for an innocent message queued behind them in one batch."""
    port = service.settings.smtp.port
    slow = raw_message("slow", content_type='multipart/mixed; boundary="b"', body=SLOW_BODY)
    assert len(slow) < service.settings.smtp.max_message_size
    started = time.monotonic()
    parse(slow)
    count = min(40, int(15 / (time.monotonic() - started)) + 1)  # one after another: over 15 s
    replies: dict[str, tuple[int, str] | str] = {}
    threads = [in_thread(port, slow, replies, f"slow {n}", timeout=300) for n in range(count)]
    time.sleep(0.5)  # the first is being read; the others wait for the next batch
    started = time.monotonic()
    in_thread(port, raw_message("innocent"), replies, "innocent", timeout=60).join(60)
    took = time.monotonic() - started
    for thread in threads:
        thread.join(300)
    assert replies.pop("innocent")[0] == 250 and took < 10, f"answered after {took:.1f} s"
    assert all(isinstance(r, tuple) and r[0] in (250, 554) for r in replies.values()), replies


def test_a_batch_out_of_time_leaves_the_rest_for_the_next(make_settings, db, monkeypatch):
    """Past BATCH_PARSE_SECONDS the messages not yet read are deferred, not refused; the
    smallest are read first, and a batch always reads one, whatever it takes."""
    monkeypatch.setattr(dispatch, "BATCH_PARSE_SECONDS", 0.01)
    settings = make_settings()
    body = many_parts(3_000)
    slow = [raw_message(f"slow {n}", content_type='multipart/mixed; boundary="b"', body=body) for n in range(2)]
    batch = [dispatch.Received(raw, "carole@example.net", (LIST,)) for raw in (slow[0], raw_message("small"), slow[1])]
    accepted = dispatch.accept_many(db, settings, batch, lambda: {})
    assert accepted.deferred == {0, 2} and accepted.replies == [[], [dispatch.OK], []]
    assert subjects(db) == ["small"]
    again = dispatch.accept_many(db, settings, [batch[0], batch[2]], lambda: {})
    assert again.deferred == {1} and again.replies[0] == [dispatch.OK]
    assert subjects(db) == ["slow 0", "small"]


def test_a_deferred_message_is_read_before_smaller_new_ones(make_settings, db, monkeypatch):
    """Smaller mail arriving all the time must not leave a deferred message unread for ever:
    the oldest deferred one has its full PARSE_SECONDS, whatever the batch's time."""
    monkeypatch.setattr(dispatch, "BATCH_PARSE_SECONDS", 0.0)
    settings = make_settings()
    body = many_parts(3_000)
    slow = dispatch.Received(
        raw_message("slow", content_type='multipart/mixed; boundary="b"', body=body), "carole@example.net", (LIST,)
    )
    smaller = [dispatch.Received(raw_message(f"small {n}"), "carole@example.net", (LIST,)) for n in range(2)]
    first = dispatch.accept_many(db, settings, [slow, smaller[0]], lambda: {})
    assert first.deferred == {0} and subjects(db) == ["small 0"]  # the smaller one went first
    again = dispatch.accept_many(db, settings, [dataclasses.replace(slow, deferred=True), smaller[1]], lambda: {})
    assert again.deferred == {1} and subjects(db) == ["slow", "small 0"]  # now the deferred one does


def test_any_error_inside_the_parser_costs_only_its_message(make_settings, db, monkeypatch):
    """On every Python, whatever the email package does with DEEP_FROM: the address parser
    raising RecursionError (as 3.11.7's does) is a 554 for that message alone."""
    real = parse_module._parsed_first_address

    def recursing(value: str) -> tuple[str, str]:
        if "poison" in value:
            raise RecursionError("maximum recursion depth exceeded")
        return real(value)

    monkeypatch.setattr(parse_module, "_parsed_first_address", recursing)
    batch = [
        dispatch.Received(raw_message("before"), "carole@example.net", (LIST,)),
        dispatch.Received(raw_message("poison", sender="(x) <poison@example.net>"), "x@example.net", (LIST,)),
        dispatch.Received(raw_message("after"), "carole@example.net", (LIST,)),
    ]
    replies = dispatch.accept_many(db, make_settings(), batch, lambda: {}).replies
    assert [[r.line[:9] for r in rs] for rs in replies] == [["250 2.0.0"], ["554 5.6.0"], ["250 2.0.0"]]
    assert subjects(db) == ["after", "before"]


@pytest.mark.skipif(not POISONOUS, reason="this Python's address parser does not recurse on the poison")
def test_deliver_refuses_a_poison_from_with_65_not_75(tmp_path: Path, db):
    """`deliver` is the same dispatch: a message that cannot be read bounces (65); a 75 would
    have the MTA retry it for days."""
    config = tmp_path / "listbridge.toml"
    config.write_text(
        f'[database]\nurl = "{db.url}"\n\n[site]\nrepo = "{tmp_path / "site"}"\n\n'
        f'[[lists]]\naddress = "{LIST}"\nowner = "owner@example.org"\n',
        encoding="utf-8",
    )
    args = [sys.executable, "-m", "listbridge", "--config", str(config), "deliver", "-f", "x@example.net", "-r", LIST]
    result = subprocess.run(args, input=raw_message("poison", sender=DEEP_FROM), capture_output=True, timeout=60)
    assert result.returncode == 65, result.stderr
    assert "554" in result.stderr.decode() and "Traceback" not in result.stderr.decode()
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Comment)) == 0

"""The private parts of aiosmtpd and mail-parser that listbridge's fast paths lean on are still
there, with the shapes it uses. pyproject.toml bounds both packages below their next minor
version; this test is what says why, loudly, when a new release is allowed in."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from email import message_from_bytes

import aiosmtpd.smtp
import mailparser

from listbridge.inbound import parse as parse_module
from listbridge.inbound import server

SMTP_SOURCE = inspect.getsource(aiosmtpd.smtp.SMTP)


def parameters(function: Callable[..., object]) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_aiosmtpd_still_has_what_the_receiver_overrides_and_calls():
    SMTP = aiosmtpd.smtp.SMTP
    # _PlainPathsFirst overrides _getaddr and falls back on it.
    assert parameters(SMTP._getaddr) == ["self", "arg"]
    assert SMTP._getaddr is not server._PlainPathsFirst._getaddr
    # _BulkData's smtp_DATA reads the stream and ends DATA the way aiosmtpd's own does.
    assert "self._reader = " in SMTP_SOURCE and "self._writer = " in SMTP_SOURCE
    assert parameters(SMTP._call_handler_hook)[:2] == ["self", "command"]
    assert parameters(SMTP._set_post_data_state) == ["self"]
    assert "self._set_post_data_state()" in inspect.getsource(SMTP.smtp_DATA)


def test_mail_parser_still_builds_its_summaries_in_make_mail():
    """_BodyParser skips mail-parser's two summary dicts by overriding _make_mail; were that
    renamed, the override would go unnoticed and the parse would cost a third more."""
    source = inspect.getsource(mailparser.MailParser)
    assert "self._mail = self._make_mail()" in source
    assert parameters(mailparser.MailParser._make_mail) == ["self", "complete"]
    body = parse_module._BodyParser(message_from_bytes(b"Subject: s\r\nFrom: a@b.example\r\n\r\nhello\r\n"))
    assert body.mail == {} and body.text_plain[0].strip() == "hello"

"""inbound.parse's shortcuts read what the plain paths read: the everyday From against the
email package's address-list parser, the plain body and the header-then-body reading against
mail-parser's walk and the email package, over generated mail (Hypothesis)."""

from __future__ import annotations

import email
from unittest import mock

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from listbridge.inbound import parse as parse_module
from listbridge.inbound.parse import IntakeError, parse

from helpers import HEAD, mail

# Pieces of From values close to the everyday `Name <local@domain>`, with the characters that
# change how the address-list parser reads them.
_from_chars = st.sampled_from(list("aZé0 _-.'+\"(),:;<>@[]\\=?\t\x00\x7f\u2028\xa0ß日"))
_from_word = st.text(_from_chars, max_size=8) | st.sampled_from(["Reader", "Renée", "O'Brien", "=?utf-8?q?a?="])
_from_address = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.text(_from_chars, max_size=8) | st.sampled_from(["reader0", "a.b+c", "x"]),
    st.text(_from_chars, max_size=8) | st.sampled_from(["example.net", "b", "a-b.example"]),
)
_from_values = st.one_of(
    st.builds(
        lambda words, gap, address, end: " ".join(words) + gap + f"<{address}>" + end,
        st.lists(_from_word, max_size=3),
        st.sampled_from(["", " ", "  ", "\t"]),
        _from_address,
        st.sampled_from(["", " ", ",", ", x@y", " (c)"]),
    ),
    st.builds(
        lambda lead, address, end: lead + address + end,
        st.sampled_from(["", " ", "<"]),
        _from_address,
        st.sampled_from(["", " ", ">", " (Name)"]),
    ),
    st.text(_from_chars, max_size=30),
)


@settings(max_examples=2000)
@given(_from_values)
def test_the_everyday_from_shortcut_reads_what_the_address_parser_reads(value):
    assert parse_module._first_address(value) == parse_module._parsed_first_address(value)


def test_the_everyday_from_takes_the_shortcut():
    for value in ("Reader 0 <reader0@example.net>", "Renée Dupré <r.d+x@example.fr>", "carole@example.net"):
        assert parse_module._SIMPLE_MAILBOX.fullmatch(value), value


# --- the plain-body shortcut: what mail-parser would read, without its walk -----------------

_content_types = st.sampled_from(
    [
        "text/plain",
        "TEXT/Plain",
        "text/plain; charset=utf-8",
        'text/plain; charset="UTF-8"',
        "text/plain; charset=us-ascii",
        "text/plain;\r\n charset=utf-8",
        "text/plain; charset=utf-8; format=flowed",
        'text/plain; charset="utf-8"; format=flowed; delsp=yes',
        "text/plain;",
        " text/plain ",
        "text/plain; charset=iso-8859-1",
        "text/plain; charset=utf8",
        "text/plain; charset=bogus",
        'text/plain; name="a.txt"',
        "text/plain; format=flowed; charset=utf-8",
        "text/plain; charset=utf-8; charset=latin1",
        "text/html; charset=utf-8",
        "text",
        "",
        "multipart/mixed; boundary=b",
        "application/octet-stream",
        "message/rfc822",
        "text/plain; charset==?utf-8?q?x?=",
    ]
) | st.text(st.sampled_from(list('text/plain; charset="utf-8"\r\n\t=?')), max_size=30)
_encodings = st.sampled_from(
    ["7bit", "8bit", "8BIT", " 8bit ", "", "binary", "quoted-printable", "base64", "x-uuencode"]
)
_body_pieces = st.sampled_from(
    [
        b"Merci pour ce billet.",
        b"r\xc3\xa9cit",
        "日本".encode(),
        b"\xff\xfe",
        b"\xc3",
        b"\r\n",
        b"\n",
        b"\r",
        b"\x00",
        b"> quoted",
        b"-- ",
        b"=C3=A9",
        b"TWVyY2k=",
        b"<b>bold</b>",
        b" ",
        b"\t",
        b"begin 644 a\n",
        b"\r\n--b\r\nContent-Type: text/plain\r\n\r\npart\r\n--b--\r\n",
        b"Subject: inner\r\n\r\ninner body",
    ]
)


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    content_type=st.none() | _content_types,
    second=st.none() | _content_types,
    encoding=st.lists(_encodings, max_size=2),
    others=st.lists(
        st.sampled_from(
            [
                "Content-Disposition: inline",
                "Content-Disposition: attachment",
                'Content-Disposition: inline; filename="a.txt"',
                "Content-ID: <x@example.net>",
                "Content-Description: note",
                "Content-Language: fr",
                "MIME-Version: 1.0",
                "Content-Type : text/html",
                "Content-Base: x",
            ]
        ),
        max_size=3,
    ),
    body=st.lists(_body_pieces, max_size=12).map(b"".join),
    noise=st.sampled_from(
        [
            "",
            "From carole@example.net Mon Jan  1 00:00:00 2026\r\n",
            "X-Folded: a\r\n b\r\n",
            "not a header\r\n",
            "X-Bare: a\n",
            "X-Cr: a\rb\r\n",
            "\r\n",
            " continued\r\n",
            "X-8bit: caf\udce9\r\n",
        ]
    ),
    end=st.sampled_from(["\r\n\r\n", "\r\n\r\n", "\r\n\r\n", "\n\n", "\r\n\n", "\r\n", ""]),
)
@example(
    "multipart/mixed; boundary=b",
    None,
    [],
    [],
    b"\r\n--b\r\nContent-Type: text/plain\r\n\r\npart\r\n--b--\r\n",
    "",
    "\r\n\r\n",
)
@example("message/rfc822", None, [], [], b"Subject: inner\r\n\r\ninner body", "", "\r\n\r\n")
def test_the_plain_body_shortcuts_read_what_mail_parser_reads(content_type, second, encoding, others, body, noise, end):
    """Both shortcuts (the header parsed alone, the plain body read without mail-parser's walk)
    against the email package and mail-parser reading the whole message."""
    lines = [noise + "From: Carole <carole@example.net>", "Subject: s"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if second is not None:
        lines.append(f"Content-Type: {second}")
    lines += [f"Content-Transfer-Encoding: {e}" for e in encoding]
    lines += others
    raw = "\r\n".join(lines).encode("utf-8", "surrogateescape") + end.encode() + body
    try:
        fast = parse(raw)
    except IntakeError:
        fast = None
    whole = mock.patch.object(parse_module, "_read_message", email.message_from_bytes)
    with whole, mock.patch.object(parse_module, "_plain_body", lambda message, headers: None):
        try:
            walked = parse(raw)
        except IntakeError:
            walked = None
    assert fast == walked


def test_an_everyday_comment_takes_the_plain_body_shortcut():
    everyday = [
        mail(
            HEAD + b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n',
            "Merci pour le récit.\r\n\r\n-- \r\nRenée\r\n".encode(),
        ),
        mail(
            HEAD + b"Content-Type: text/plain; charset=us-ascii; format=flowed\r\nContent-Language: en-US\r\n",
            b"Thanks.\r\n",
        ),
        mail(
            HEAD + b"Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: quoted-printable\r\n",
            b"Un r=C3=A9cit.\r\n",
        ),
        b"From: carole@example.net\nSubject: s\n\nNo MIME headers at all.\n",
    ]
    read = []
    reader = email.message_from_bytes
    walked = mock.patch.object(parse_module, "_BodyParser", side_effect=AssertionError("mail-parser was called"))

    def reading(data: bytes) -> email.message.Message:
        read.append(data)
        return reader(data)

    recorded = mock.patch.object(email, "message_from_bytes", reading)
    with walked, recorded:
        texts = [parse(raw).text for raw in everyday]
    # Only the last one's header (LF line ends) made the email package read a body.
    assert [raw for raw in everyday if raw in read] == everyday[3:]
    assert texts == ["Merci pour le récit.\n\n-- \nRenée", "Thanks.", "Un récit.", "No MIME headers at all."]

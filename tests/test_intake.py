"""inbound.parse.parse(): real-world and hostile mail, as bytes, to the fields listbridge acts on."""

from __future__ import annotations

import doctest
import time
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listbridge.inbound import parse as parse_module
from listbridge.inbound.parse import IntakeError, parse
from listbridge.message import Incoming
from listbridge.sanitize import html_to_text, one_line

from helpers import HEAD, mail, multipart, part


def no_control(value: str) -> bool:
    return not any(unicodedata.category(c) == "Cc" for c in value)


# --- headers -----------------------------------------------------------------------------


def test_plain_message():
    raw = mail(
        b"From: Carole Martin <carole@example.net>\r\nSubject: Comment-les-3hg-ont-repare\r\n"
        b"Message-ID: <abc.123@example.net>\r\nIn-Reply-To: <post.1@bla.example.org>\r\n"
        b"References: <root@bla.example.org>\r\n\t<post.1@bla.example.org>\r\n",
        b"Thanks for the post.\r\nSecond line.\r\n",
    )
    incoming = parse(raw)
    assert incoming.sender == "carole@example.net"
    assert incoming.display_name == "Carole Martin"
    assert incoming.subject == "Comment-les-3hg-ont-repare"
    assert incoming.message_id == "<abc.123@example.net>"
    assert incoming.in_reply_to == "<post.1@bla.example.org>"
    assert incoming.references == ("<root@bla.example.org>", "<post.1@bla.example.org>")
    assert incoming.text == "Thanks for the post.\nSecond line."
    assert incoming.raw == raw
    assert not incoming.auto_submitted and not incoming.bulk and incoming.x_loop == ()


@pytest.mark.parametrize(
    "header, name, address",
    [
        (b"From: =?utf-8?q?Ren=C3=A9e_Dupr=C3=A9?= <renee@example.fr>", "Renée Dupré", "renee@example.fr"),
        (b"From: =?ISO-8859-1?Q?Andr=E9?= Pirard <pirard@example.be>", "André Pirard", "pirard@example.be"),
        (b"From: =?utf-8?b?w4lsb8Ovc2U=?= <eloise@example.fr>", "Éloïse", "eloise@example.fr"),
        (b'From: "=?utf-8?q?Ren=C3=A9e?=" <renee@example.fr>', "Renée", "renee@example.fr"),  # invalid, common
        (b"From: =?utf-8?q?Martin=2C_Carole?= <carole@example.net>", "Martin, Carole", "carole@example.net"),
        (b'From: "Martin, Carole" <carole@example.net>', "Martin, Carole", "carole@example.net"),
        (b"From: Ren\xc3\xa9e <renee@example.fr>", "Renée", "renee@example.fr"),  # raw UTF-8
        (b"From: Ren\xe9e <renee@example.fr>", "Renée", "renee@example.fr"),  # raw latin-1
        (b"From: carole@example.net (Carole)", "Carole", "carole@example.net"),
        (b"From: carole@example.net", "", "carole@example.net"),
        (b"From: <carole@example.net>", "", "carole@example.net"),
        (b"From: =?x-unknown?q?Ren=C3=A9e?= <renee@example.fr>", "Renée", "renee@example.fr"),
        (
            b"From: =?utf-8?q?=3Cadmin=40bla=2Eexample=2Eorg=3E?= <eve@example.com>",
            "<admin@bla.example.org>",
            "eve@example.com",
        ),
        (
            b"From: =?utf-8?q?a=2C_admin=40bla=2Eexample=2Eorg=2C?= <eve@example.com>",
            "a, admin@bla.example.org,",
            "eve@example.com",
        ),
    ],
)
def test_from_display_names_and_addresses(header, name, address):
    incoming = parse(mail(header + b"\r\nSubject: s\r\n"))
    assert (incoming.display_name, incoming.sender) == (name, address)


@pytest.mark.parametrize(
    "subject, expected",
    [
        (b"=?utf-8?q?Caf=C3=A9_cr=C3=A8me?=", "Café crème"),
        (b"=?iso-8859-1?q?caf=E9?= =?iso-8859-1?q?_au_lait?=", "café au lait"),  # space between words dropped
        (b"=?utf-8?b?w6k=?= =?utf-8?b?w6g=?=", "éè"),
        (b"=?utf-8?b?8J+Y?= =?utf-8?b?gA==?=", "\U0001f600"),  # one character split over two words
        (b"Re: =?windows-1252?q?=93quoted=94?= text", "Re: \u201cquoted\u201d text"),
        (b'"=?utf-8?q?caf=C3=A9?="', '"café"'),  # inside quotes: invalid, decoded anyway
        (b"=?UTF-8*fr?Q?caf=C3=A9?=", "café"),  # RFC 2231 language
        (b"=?x-unknown?q?caf=C3=A9?=", "café"),
        (b"=?x-unknown?q?caf=E9?=", "café"),
        (b"=?utf-8?q?caf=E9?=", "café"),  # mislabelled latin-1
        (b"\xe9t\xe9 \xe0 Paris", "été à Paris"),  # raw 8-bit latin-1
        (b"\xc3\xa9t\xc3\xa9", "été"),  # raw 8-bit UTF-8
        (b"a very\r\n long\r\n\tfolded subject", "a very long folded subject"),
        (b"=?utf-8?b?!!!?= still here", "still here"),
        (b"", ""),
    ],
)
def test_subjects(subject, expected):
    assert parse(mail(b"From: a@example.net\r\nSubject: " + subject + b"\r\n")).subject == expected


@pytest.mark.parametrize(
    "encoded",
    [
        b"=?utf-8?q?Eve=0D=0ABcc=3A_victim=40example=2Eorg?=",
        b"=?utf-8?q?Eve=0D=0ABcc:_victim@example.org?=",  # ':' and '@' where RFC 2047 forbids them
        b"=?utf-8?b?RXZlDQpCY2M6IHZpY3RpbUBleGFtcGxlLm9yZw==?=",
        b"=?utf-8?q?Eve=0ABcc=3A_x=40y?=",
        b"=?utf-8?q?Eve=0DBcc=3A_x=40y?=",
        b"=?utf-8?q?Eve=C2=85Bcc=E2=80=A8x=00y=1B=7F?=",
        b'"=?utf-8?q?Eve=0D=0ABcc=3A_x=40y?="',
    ],
)
def test_encoded_line_breaks_never_survive(encoded):
    raw = mail(b"From: " + encoded + b" <eve@example.net>\r\nSubject: " + encoded + b"\r\n")
    incoming = parse(raw)
    assert incoming.sender == "eve@example.net"
    for value in (incoming.subject, incoming.display_name):
        assert "\r" not in value and "\n" not in value and no_control(value)
        assert "Eve" in value and "Bcc" in value


def test_missing_from_falls_back_to_the_envelope_sender():
    raw = mail(b"Subject: no from\r\n")
    assert parse(raw, "carole@example.net").sender == "carole@example.net"
    assert parse(raw, "<carole@example.net>").sender == "carole@example.net"
    assert parse(raw).sender == ""
    assert parse(raw, "MAILER-DAEMON").sender == ""  # not an address
    unusable = mail(b"From: undisclosed-recipients:;\r\nSubject: s\r\n")
    assert parse(unusable, "carole@example.net").sender == "carole@example.net"
    assert parse(mail(b"From: <>\r\n"), "carole@example.net").sender == "carole@example.net"


def test_overlong_addresses_are_dropped_not_cut():
    local = b"a" * 400
    incoming = parse(mail(b"From: Long <" + local + b"@example.net>\r\n"), "x" * 330 + "@example.net")
    assert incoming.sender == "" and incoming.display_name == "Long"


def test_from_wins_over_the_envelope_sender():
    assert parse(mail(b"From: a@example.net\r\n"), "bounce+x@example.net").sender == "a@example.net"


def test_message_ids_keep_only_the_ids():
    raw = mail(
        b"From: a@example.net\r\nMessage-ID:\r\n <x.1@example.net> (added by mx)\r\n"
        b"In-Reply-To: <p.1@bla.example.org> (Carole's message of Monday)\r\n"
        b"References: junk <r.1@bla.example.org> noise <r.2@bla.example.org>\r\n"
    )
    incoming = parse(raw)
    assert incoming.message_id == "<x.1@example.net>"
    assert incoming.in_reply_to == "<p.1@bla.example.org>"
    assert incoming.references == ("<r.1@bla.example.org>", "<r.2@bla.example.org>")


def test_an_id_with_a_control_character_is_no_id():
    """Found by Hypothesis: `References: <ESC>` came through as an id, escape and all."""
    raw = mail(b"From: a@example.net\r\nReferences: <\x1b> <r.1@bla.example.org>\r\nIn-Reply-To: <p\x07@x>\r\n")
    incoming = parse(raw)
    assert incoming.references == ("<r.1@bla.example.org>",)
    assert no_control(incoming.in_reply_to)


# --- automatic mail ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, auto, bulk",
    [
        (b"", False, False),
        (b"Auto-Submitted: no\r\n", False, False),
        (b"Auto-Submitted: No (a human wrote this)\r\n", False, False),
        (b"Auto-Submitted: auto-replied\r\n", True, False),
        (b"Auto-Submitted: auto-generated\r\n", True, False),
        (b'Auto-Submitted: auto-replied; owner-email="me@example.net"\r\n', True, False),
        (b"Auto-Submitted: AUTO-NOTIFIED\r\n", True, False),
        (b"Auto-Submitted: no\r\nAuto-Submitted: auto-replied\r\n", True, False),
        (b"Precedence: bulk\r\n", False, True),
        (b"Precedence: JUNK\r\n", False, True),
        (b"Precedence: list\r\n", False, True),
        (b"Precedence: list (from a mailing list)\r\n", False, True),
        (b"Precedence: first-class\r\n", False, False),
        (b"Precedence: normal\r\n", False, False),
    ],
)
def test_auto_submitted_and_precedence(headers, auto, bulk):
    incoming = parse(mail(b"From: a@example.net\r\n" + headers))
    assert (incoming.auto_submitted, incoming.bulk) == (auto, bulk)
    assert incoming.is_automated("a@example.net", "bla@bla.example.org") == (auto or bulk)


def test_x_loop():
    raw = mail(b"From: a@example.net\r\nX-Loop: other@example.org\r\nX-Loop: <BLA@bla.example.org>\r\n")
    incoming = parse(raw)
    assert incoming.x_loop == ("other@example.org", "<BLA@bla.example.org>")
    assert incoming.is_automated("a@example.net", "bla@bla.example.org")
    assert not incoming.is_automated("a@example.net", "autre@bla.example.org")
    assert not incoming.is_automated("a@example.net", "")
    assert incoming.carries_loop(" bla@BLA.example.org ") and not incoming.carries_loop("bla")


@pytest.mark.parametrize("envelope", ["", "<>", " <> ", "MAILER-DAEMON", "mailer-daemon@mx.example.org"])
def test_null_sender_is_automated(envelope):
    assert parse(mail(b"From: a@example.net\r\n")).is_automated(envelope, "bla@bla.example.org")


def test_a_person_is_not_automated():
    incoming = parse(mail(b"From: a@example.net\r\nX-Loop: other@example.org\r\n"))
    assert not incoming.is_automated("a@example.net", "bla@bla.example.org")


# --- bodies ------------------------------------------------------------------------------


def test_multipart_alternative_prefers_plain_text():
    raw = multipart(
        b"alternative",
        part(b"text/html; charset=utf-8", b"<p>HTML version</p>"),
        part(b"text/plain; charset=utf-8", b"Plain version"),
    )
    assert parse(raw).text == "Plain version"


@pytest.mark.parametrize(
    "content_type, encoding, body, expected",
    [
        (
            b"text/plain; charset=utf-8",
            b"quoted-printable",
            b"caf=C3=A9 cr=C3=A8me, a soft=\r\n break",
            "café crème, a soft break",
        ),
        (b"text/plain; charset=iso-8859-1", b"quoted-printable", b"caf=E9 =E0 Paris", "café à Paris"),
        (b"text/plain; charset=utf-8", b"base64", b"Y2Fmw6kgY3LDqG1l\r\n", "café crème"),
        (b"text/plain; charset=iso-8859-1", b"8bit", b"\xe9t\xe9", "été"),
        (b"text/plain; charset=windows-1252", b"8bit", b"\x93quoted\x94 \x80 5", "\u201cquoted\u201d \u20ac 5"),
        (b'text/plain; charset="UTF-8"', b"8bit", "Grüße 🙂".encode(), "Grüße 🙂"),
    ],
)
def test_transfer_encodings_and_charsets(content_type, encoding, body, expected):
    raw = mail(HEAD + b"Content-Type: " + content_type + b"\r\nContent-Transfer-Encoding: " + encoding + b"\r\n", body)
    assert parse(raw).text == expected


def test_html_only_mail_becomes_text():
    html = (
        b"<html><head><title>Newsletter</title><style>p { color: red }</style></head><body>"
        b"<p>Caf=E9 &amp; th=E9 &lt;b&gt;</p><script>alert('x')</script>"
        b"<p>Second <b>paragraph</b> <a href=3D'http://evil.example'>link</a><br>line</p></body></html>"
    )
    raw = mail(
        HEAD + b"Content-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n", html
    )
    text = parse(raw).text
    assert text == "Café & thé <b>\n\nSecond paragraph link\n\nline"


@pytest.mark.parametrize(
    "markup, expected",
    [
        ("<p>one</p><p>two</p>", "one\n\ntwo"),
        ("one<p>two", "one\n\ntwo"),
        ("a<br>b<br/>c<hr>d", "a\n\nb\n\nc\n\nd"),
        ("<ul><li>x</li><li>y</li></ul>", "x\n\ny"),
        ("&eacute;&#233;&#xe9; &nbsp;&amp;&quot;", 'ééé &"'),
        ("<SCRIPT type=x>evil()</SCRIPT >ok", "ok"),
        ("<scr<script>x</script>ipt>alert(1)</script>ok", "ok"),  # spliced script
        ("ok<style>unterminated { color: red", "ok"),
        ("<p>x<!-- secret comment --></p>", "x"),
        ('<img src="x" onerror="alert(1)">pic', "pic"),
        ("<iframe src=x></iframe><object>o</object>t", "ot"),
        ("1 < 2 and 3 > 2", "1 < 2 and 3 > 2"),
    ],
)
def test_html_to_text(markup, expected):
    assert html_to_text(markup) == expected


def test_attachments_are_not_text():
    raw = multipart(
        b"mixed",
        part(b"text/plain; charset=utf-8", b"The comment."),
        part(
            b'text/plain; name="notes.txt"',
            b"ATTACHED NOTES",
            b'Content-Disposition: attachment; filename="notes.txt"\r\n',
        ),
        part(
            b"application/pdf",
            b"JVBERi0xLjQK",
            b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment\r\n",
        ),
        part(b"image/png", b"iVBORw0KGgo=", b"Content-Transfer-Encoding: base64\r\n"),
    )
    assert parse(raw).text == "The comment."


def test_multipart_without_closing_boundary():
    raw = multipart(b"alternative", part(b"text/plain; charset=utf-8", b"No end boundary here"), close=False)
    assert parse(raw).text == "No end boundary here"


def test_multipart_without_boundary_parameter_keeps_its_text():
    raw = mail(HEAD + b"Content-Type: multipart/mixed\r\n", b"--X\r\nContent-Type: text/plain\r\n\r\nthe words\r\n")
    assert "the words" in parse(raw).text


@pytest.mark.parametrize(
    "encoding, body",
    [(b"base64", b"\xff\xfe not base64 at all ***\r\n"), (b"base64", b"SGVsbG8gd29ybGQ\r\n"), (b"x-uuencode", b"junk")],
)
def test_bad_transfer_encoding_does_not_crash(encoding, body):
    incoming = parse(mail(HEAD + b"Content-Type: text/plain\r\nContent-Transfer-Encoding: " + encoding + b"\r\n", body))
    assert incoming.sender == "carole@example.net" and isinstance(incoming.text, str)


def test_unknown_charset_is_read_as_utf8_or_latin1():
    raw = mail(HEAD + b"Content-Type: text/plain; charset=x-unknown\r\n", b"caf\xc3\xa9")
    assert parse(raw).text.startswith("caf")
    assert parse(raw).sender == "carole@example.net"


def test_control_characters_and_bare_cr_are_removed_from_text():
    raw = mail(HEAD + b"Content-Type: text/plain; charset=utf-8\r\n", b"a\x00b\rc\r\nd\x1b[31m\tred\xc2\x9b")
    assert parse(raw).text == "a b\nc\nd [31m\tred"


# --- size and garbage --------------------------------------------------------------------


def test_huge_headers_parse_in_reasonable_time():
    references = b"References:" + b"".join(b"\r\n <%d.thread@bla.example.org>" % i for i in range(8000))
    assert len(references) > 200_000
    received = b"".join(
        b"Received: from h%d.example.org (h%d [192.0.2.1]) by mx.example.org with ESMTP id %d;\r\n"
        b"\tMon, 1 Jan 2024 00:00:00 +0000\r\n" % (i, i, i)
        for i in range(5000)
    )
    raw = mail(received + references + b"\r\n" + HEAD)
    start = time.monotonic()
    incoming = parse(raw)
    assert time.monotonic() - start < 20
    assert incoming.sender == "carole@example.net"
    # Whole ids only: the thread root and the newest ones.
    assert len(incoming.references) == parse_module.MAX_REFERENCES
    assert incoming.references[0] == "<0.thread@bla.example.org>"
    assert incoming.references[-1] == "<7999.thread@bla.example.org>"


def test_huge_subject_is_cut_to_one_header_line():
    incoming = parse(mail(b"From: a@example.net\r\nSubject: " + b"=?utf-8?q?caf=C3=A9?= " * 20000 + b"\r\n"))
    assert 0 < len(incoming.subject) <= 998 and incoming.subject.startswith("cafécafé")


@pytest.mark.parametrize("raw", [b"", b"\r\n", b"\r\n\r\nbody only", b"no header at all, just text\n", b"\x00\xff\xfe"])
def test_no_header_is_an_intake_error(raw):
    with pytest.raises(IntakeError):
        parse(raw)


def test_doctests_of_the_module_pass():
    result = doctest.testmod(parse_module)
    assert result.attempted > 0 and result.failed == 0


header_names = st.sampled_from(
    [
        "From",
        "Subject",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Auto-Submitted",
        "References",
        "X-Loop",
        "MIME-Version",
    ]
)
header_values = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"multipart/mixed; boundary=b", b"text/html; charset=x-bogus", b"base64", b"=?utf-8?b?AAAA?="]),
)
structured = st.lists(st.tuples(header_names, header_values), max_size=6).flatmap(
    lambda hs: st.binary(max_size=200).map(
        lambda body: b"".join(n.encode() + b": " + v + b"\r\n" for n, v in hs) + b"\r\n" + body
    )
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=500), structured))
def test_parse_returns_incoming_or_raises_intake_error(raw):
    try:
        incoming = parse(raw, "env@example.net")
    except IntakeError:
        return
    assert isinstance(incoming, Incoming)
    for value in (incoming.sender, incoming.display_name, incoming.subject, incoming.message_id, incoming.in_reply_to):
        assert no_control(value)
    assert all(no_control(v) for v in incoming.x_loop + incoming.references)
    assert no_control(incoming.text.replace("\n", "").replace("\t", ""))


@settings(max_examples=500)
@given(st.text(), st.integers(min_value=0, max_value=2000))
def test_one_line_never_returns_a_control_character(value, limit):
    line = one_line(value, limit)
    assert no_control(line) and "\u2028" not in line and "\u2029" not in line
    assert len(line) <= limit and line == line.strip()


@settings(max_examples=300)
@given(st.text(st.characters(blacklist_characters="<>&", blacklist_categories=["Cs"])))
def test_html_to_text_leaves_no_tag_and_no_script(value):
    text = html_to_text(f"<div><p class='x'>{value}</p><script>SECRET</script><style>HIDDEN</style></div>")
    assert "<" not in text and "SECRET" not in text and "HIDDEN" not in text
    assert text.split() == one_line(value, 10**6).split()

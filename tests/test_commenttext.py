"""Comment text cleaning on realistic mails: French and English, Thunderbird, Gmail, Apple Mail,
Outlook. Each case is the text/plain body as the client sends it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listbridge.lists.commenttext import clean

THUNDERBIRD_FR = """\
Bonjour,

Merci pour ce récit, on a eu la même panne chez nous.\u00a0 
Le routeur de la box ne fait pas de NAT loopback.

Jean

Le 12/03/2026 à 10:00, Carole a écrit\u00a0:
> # Comment les 3hg ont réparé le CHATONS
>
> Le serveur était coupé.
>
> -- 
> Carole
"""

GMAIL_EN_WRAPPED = """\
Great write-up, thanks!\r
\r
I'd add: check the MX TTL before moving anything.\r
\r
On Tue, Mar 12, 2026 at 10:00 AM Carole Dupont <\r
carole.dupont@example.org> wrote:\r
\r
> Hello,\r
>\r
> The home server was cut off.\r
>\r
"""

GMAIL_FR = """\
Très bien vu.

Le mar. 12 mars 2026 à 10:00, Carole <carole@example.org> a écrit :

> Bonjour,
> > et même un quote imbriqué
"""

APPLE_MAIL_EN = """\
Nice fix.

-- 
Ann Example
ann@example.net

On 12 Mar 2026, at 10:00, Carole <c@example.org> wrote:

> The server was cut off.
"""

IPHONE_FR = """\
Bravo à toute l'équipe !

Envoyé de mon iPhone

> Le 12 mars 2026 à 10:00, Carole <c@example.org> a écrit :
>
> Bonjour
"""

OUTLOOK_EN = """\
Hi,

We had the same issue last year.

Regards,
Bob

-----Original Message-----
From: Carole <c@example.org>
Sent: Tuesday, March 12, 2026 10:00 AM
To: bla@bla.example.org
Subject: Comment les 3hg ont réparé le CHATONS

The server was cut off.
"""

OUTLOOK_FR_RULE = """\
Bonjour,

Très intéressant.

________________________________
De : Carole <c@example.org>
Envoyé : mardi 12 mars 2026 10:00
À : bla@bla.example.org
Objet : Comment les 3hg ont réparé le CHATONS

Le serveur était coupé.
"""

INLINE_EN = """\
On 3/12/26 10:00, Carole wrote:
> The ISP cut the line without notice.

That happened to us too, twice.

> We moved the site to a small VM.

Which provider?

> More soon.
--
John
"""

MUTT_SIG_NO_SPACE = """\
Short answer: yes.

--
jd
"""


@pytest.mark.parametrize(
    ("mail", "expected"),
    [
        (
            THUNDERBIRD_FR,
            "Bonjour,\n\nMerci pour ce récit, on a eu la même panne chez nous.\n"
            "Le routeur de la box ne fait pas de NAT loopback.\n\nJean",
        ),
        (GMAIL_EN_WRAPPED, "Great write-up, thanks!\n\nI'd add: check the MX TTL before moving anything."),
        (GMAIL_FR, "Très bien vu."),
        (APPLE_MAIL_EN, "Nice fix."),
        (IPHONE_FR, "Bravo à toute l'équipe !"),
        (OUTLOOK_EN, "Hi,\n\nWe had the same issue last year.\n\nRegards,\nBob"),
        (OUTLOOK_FR_RULE, "Bonjour,\n\nTrès intéressant."),
        (
            INLINE_EN,
            "> The ISP cut the line without notice.\n\nThat happened to us too, twice.\n\n"
            "> We moved the site to a small VM.\n\nWhich provider?",
        ),
        (MUTT_SIG_NO_SPACE, "Short answer: yes."),
    ],
    ids=[
        "thunderbird-fr",
        "gmail-en-wrapped",
        "gmail-fr",
        "apple-mail-en",
        "iphone-fr",
        "outlook-en",
        "outlook-fr-rule",
        "inline-en",
        "sig-no-space",
    ],
)
def test_real_mails(mail: str, expected: str) -> None:
    assert clean(mail) == expected


def test_inline_quotes_are_kept_as_written() -> None:
    text = "> quoted\n>> deeper\nmy answer\n  > indented quote\nagain"
    assert clean(text) == text


def test_trailing_quote_without_attribution_is_dropped() -> None:
    assert clean("Yes.\n\n> old\n>\n> older\n\n\n") == "Yes."


def test_a_sentence_is_not_an_attribution() -> None:
    # Ends with a full stop: not the first half of a wrapped attribution.
    text = "Le chat a 2 ans.\nCarole a écrit :\n> miaou"
    assert clean(text) == "Le chat a 2 ans."
    # "wrote:" with no quote after it is the author's own text.
    assert clean("On Monday, 3 people wrote:\nthe same thing") == "On Monday, 3 people wrote:\nthe same thing"


def test_dashes_that_are_not_a_signature_are_kept() -> None:
    text = "a -- b\n--- not a signature\n---\n- item"
    assert clean(text) == text


def test_line_ends_and_whitespace() -> None:
    assert clean("\r\n\r\n  a  \r\nb\t\rc\r\n\r\n\r\n") == "  a\nb\nc"
    assert clean("") == ""
    assert clean("-- \nonly a signature") == ""
    assert clean("> only a quote") == ""


mail_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "",
                "> q",
                ">",
                "> > q",
                "-- ",
                "--",
                "On 1 Jan 2026, A <a@b> wrote:",
                "Le 12 mars 2026, A a",
                "écrit :",
                "A wrote:",
                "Sent from my iPhone",
                "-----Original Message-----",
                "_" * 32,
                "From: A",
                "text",
                "  ",
                "\r",
                "\t",
            ]
        ),
        st.text(max_size=8),
    ),
    max_size=15,
).map("\n".join)


@settings(max_examples=400)
@given(st.one_of(st.text(), mail_lines))
def test_clean_is_idempotent_and_tidy(text: str) -> None:
    out = clean(text)
    assert clean(out) == out
    assert "\r" not in out
    assert all(line == line.rstrip() for line in out.split("\n"))
    assert out == out.strip("\n")


@given(st.lists(st.text(alphabet="abcdefghij éà,.!?:", min_size=1).filter(lambda s: s.strip()), min_size=1))
def test_plain_text_is_unchanged(paragraphs: list[str]) -> None:
    text = "\n\n".join(p.strip() for p in paragraphs)
    assert clean(text) == text

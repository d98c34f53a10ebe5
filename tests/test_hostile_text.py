"""commenttext.clean on text built to be slow (it runs for each comment inside the store
process's transaction, outside the parse time limit): near-linear cost, and over SMTP the mail
beside such a comment is answered in its usual time."""

from __future__ import annotations

import re
import smtplib
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listbridge.lists import commenttext
from listbridge.lists.commenttext import clean

from helpers import send

LIST = "bla@bla.example.org"
SIZE = 200_000
BOUND = 3.0  # each takes well under a second; a quadratic clean took tens of seconds to minutes

HOSTILE = {
    "a long attribution-like line with digits": "on " + "1 " * (SIZE // 2) + "\n> q\n",
    "a long address-like token": "x <" + "@" * SIZE + " wrote:\n> q\n",
    "stacked mobile signatures and quotes": "x\n" + "Sent from my iPhone\n> q\n" * (SIZE // 22),
    "stacked attributions": "x\n" + "On 1 wrote:\n" * (SIZE // 12) + "> q\ntext\n",
    "blank lines before a quote": "x\n" + "\n" * SIZE + "> q",
    "a long run of spaces after a French attribution": "on 1 a" + " " * SIZE + "x\n> q",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_comment_text_is_cleaned_in_bounded_time(name):
    started = time.monotonic()
    clean(HOSTILE[name])
    assert time.monotonic() - started < BOUND, name


# The attribution pattern as it was, with backtracking, as the reference for short lines.
_SLOW_ATTRIBUTION = re.compile(
    rf"^(?:(?:on|le|am|el|il|op|den|dne)\s.*\d.*\s{commenttext._WROTE}"
    rf"|[^>\s].{{0,120}}<[^<>\s]+@[^<>\s]+>\s*{commenttext._WROTE}|[^>\s][^.!?]{{0,60}}\s{commenttext._WROTE})",
    re.IGNORECASE,
)
_line = st.lists(
    st.sampled_from(["on ", "le ", "1", " ", "a", "@", "<", ">", "wrote", ":", "a écrit", ".", "x@y", "\t"]),
    max_size=20,
).map("".join)


@settings(max_examples=3000)
@given(_line)
def test_the_linear_attribution_pattern_matches_the_same_lines(line):
    assert bool(commenttext._ATTRIBUTION.match(line)) == bool(_SLOW_ATTRIBUTION.match(line))


def test_a_slow_comment_does_not_hold_up_the_mail_beside_it(service):
    port = service.settings.smtp.port
    replies: dict[str, object] = {}

    def poison() -> None:
        body = "Sent from my iPhone\n> q\n" * 20_000  # 460 KB: minutes for a quadratic clean
        replies["poison"] = send(port, LIST, subject="poison", body=body)

    thread = threading.Thread(target=poison, daemon=True)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    try:
        replies["innocent"] = send(port, LIST, subject="innocent")
    except (OSError, smtplib.SMTPException) as exc:
        replies["innocent"] = exc
    assert time.monotonic() - started < 10 and replies["innocent"] == {}, replies
    thread.join(30)
    assert replies["poison"] == {}, replies

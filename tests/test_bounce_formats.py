"""What inbound.parse reads in bounces as real MTAs word them, through flufl.bounce's own
detectors: the address that failed for good, a delay as temporary, an auto-reply as nothing."""

from __future__ import annotations

import pytest

from listbridge.inbound.parse import SCAN_BYTES, parse
from listbridge.message import Failures

READER = "reader@example.net"
ORIGINAL = "From: bla@bla.example.org\r\nTo: reader@example.net\r\nSubject: [bla] Un billet\r\n\r\nMerci.\r\n"


def report(sender: str, subject: str, fields: str, text: str = "Delivery has failed.") -> str:
    """An RFC 3464 multipart/report, as Sendmail, Gmail and Office 365 send them."""
    return (
        f"From: {sender}\r\nTo: bla+bounces@bla.example.org\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        f"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{text}\r\n\r\n"
        f"--b1\r\nContent-Type: message/delivery-status\r\n\r\n{fields}\r\n\r\n"
        f"--b1\r\nContent-Type: message/rfc822\r\n\r\n{ORIGINAL}\r\n--b1--\r\n"
    )


EXIM = (
    "From: Mail Delivery System <Mailer-Daemon@mx.example.net>\r\nTo: bla+bounces@bla.example.org\r\n"
    "Subject: Mail delivery failed: returning message to sender\r\n"
    f"X-Failed-Recipients: {READER}\r\nAuto-Submitted: auto-replied\r\n\r\n"
    "This message was created automatically by mail delivery software.\r\n\r\n"
    "A message that you sent could not be delivered to one or more of its\r\n"
    "recipients. This is a permanent error. The following address(es) failed:\r\n\r\n"
    f"  {READER}\r\n    SMTP error from remote mail server after RCPT TO:<{READER}>:\r\n"
    "    550 5.1.1 User unknown\r\n\r\n------ This is a copy of the message, including all the headers. ------\r\n\r\n"
    + ORIGINAL
)
QMAIL = (
    "From: MAILER-DAEMON@mx.example.net\r\nTo: bla+bounces@bla.example.org\r\n"
    "Subject: failure notice\r\n\r\n"
    "Hi. This is the qmail-send program at mx.example.net.\r\n"
    "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
    "This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
    f"<{READER}>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
    "--- Below this line is a copy of the message.\r\n\r\n" + ORIGINAL
)
SENDMAIL = report(
    "Mail Delivery Subsystem <MAILER-DAEMON@mail.example.net>",
    "Returned mail: see transcript for details",
    "Reporting-MTA: dns; mail.example.net\r\nArrival-Date: Tue, 1 Dec 2026 10:00:00 +0100\r\n\r\n"
    f"Final-Recipient: RFC822; {READER}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    "Remote-MTA: DNS; mx.example.net\r\nDiagnostic-Code: SMTP; 550 5.1.1 User unknown",
    "The original message was received at Tue, 1 Dec 2026 10:00:00 +0100\r\n   ----- The following addresses had "
    f"permanent fatal errors -----\r\n<{READER}>",
)
GMAIL = report(
    "Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
    "Delivery Status Notification (Failure)",
    "Reporting-MTA: dns; googlemail.com\r\nArrival-Date: Tue, 01 Dec 2026 01:00:00 -0800 (PST)\r\n\r\n"
    f"Final-Recipient: rfc822; {READER}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    "Remote-MTA: dns; mx.example.net. (192.0.2.1, the server for the domain example.net.)\r\n"
    "Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist.",
    f"** Address not found **\r\n\r\nYour message wasn't delivered to {READER} because the address couldn't be found.",
)
OFFICE365 = report(
    "Microsoft Outlook <postmaster@outlook.com>",
    "Undeliverable: [bla] Un billet",
    "Reporting-MTA: dns;AM0PR01MB1234.eurprd01.prod.exchangelabs.com\r\n"
    "Received-From-MTA: dns;EUR01-VE1-obe.outbound.protection.outlook.com\r\n\r\n"
    f"Final-recipient: RFC822; {READER}\r\nAction: failed\r\nStatus: 5.1.10\r\n"
    "Diagnostic-code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
    "Your message to reader@example.net couldn't be delivered.",
)
DELAYED = report(
    "Mail Delivery System <MAILER-DAEMON@mx.example.net>",
    "Delayed Mail (still being retried)",
    f"Reporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: rfc822; {READER}\r\nAction: delayed\r\n"
    "Status: 4.4.1\r\nDiagnostic-Code: X-Postfix; connect to mx.example.net: Connection timed out\r\n"
    "Will-Retry-Until: Fri, 4 Dec 2026 10:00:00 +0100",
    "This is the mail system at host mx.example.net.\r\n\r\n####################################################\r\n"
    "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n",
)
AUTOREPLY = (
    f"From: Reader <{READER}>\r\nTo: bla+bounces@bla.example.org\r\nSubject: Absent / Out of office\r\n"
    "Auto-Submitted: auto-replied\r\n\r\nJe suis absente jusqu'au 7 décembre. I am away until 7 December.\r\n"
)


@pytest.mark.parametrize(
    "raw",
    [EXIM, QMAIL, SENDMAIL, GMAIL, OFFICE365],
    ids=["exim", "qmail", "sendmail", "gmail", "office365"],
)
def test_a_permanent_failure_names_the_address(raw):
    failures = parse(raw.encode(), "", bounce=True).failures
    assert failures is not None and READER in failures.permanent, failures


def test_a_delay_is_temporary():
    assert parse(DELAYED.encode(), "", bounce=True).failures == Failures(temporary=frozenset({READER}))


def test_an_auto_reply_is_no_failure():
    assert parse(AUTOREPLY.encode(), READER, bounce=True).failures == Failures()


def test_mail_that_looks_like_no_bounce_is_not_scanned():
    comment = f"From: Carole <carole@example.net>\r\nTo: bla@bla.example.org\r\nSubject: Re: x\r\n\r\n{EXIM}"
    assert parse(comment.encode(), "carole@example.net").failures is None
    assert parse(SENDMAIL.encode(), "carole@example.net").failures is not None  # a report is, whoever sent it


def test_raw_8bit_headers_are_read_not_refused():
    """French MTAs send unencoded UTF-8 subjects: the detectors still read the report."""
    raw = QMAIL.replace("Subject: failure notice", "Subject: Échec de la remise").encode()
    failures = parse(raw, "", bounce=True).failures
    assert failures is not None and READER in failures.permanent, failures


def test_a_detector_that_fails_finds_nothing_and_the_message_is_taken(monkeypatch):
    def broken(message):
        raise AttributeError("'Header' object has no attribute 'lower'")

    monkeypatch.setattr("listbridge.inbound.parse.all_failures", broken)
    assert parse(SENDMAIL.encode(), "", bounce=True).failures == Failures()


def test_only_the_head_of_a_large_bounce_is_scanned():
    padding = "x" * 76 + "\r\n"
    body = padding * (SCAN_BYTES // len(padding) + 1)
    ahead = EXIM.replace("------ This is a copy", body + "------ This is a copy")
    assert parse(EXIM.encode() + body.encode(), "", bounce=True).failures == Failures(permanent=frozenset({READER}))
    late = QMAIL.replace("Hi. This is the qmail-send program", body + "Hi. This is the qmail-send program")
    assert parse(late.encode(), "", bounce=True).failures == Failures()
    assert parse(ahead.encode(), "", bounce=True).failures == Failures(permanent=frozenset({READER}))

"""Incoming: a received message as the list steps read it. inbound/parse makes one from the
raw bytes; lists/ and inbound/dispatch act on it."""

from __future__ import annotations

from dataclasses import dataclass

from listbridge.sanitize import one_line


@dataclass(frozen=True)
class Failures:
    """What a bounce says failed (flufl.bounce's detectors): lower-case addresses whose
    delivery failed for good, and those only delayed (DSN `Action: delayed`, 4.x.x); and the
    Message-IDs it quotes (the returned mail's, when it carries its headers)."""

    permanent: frozenset[str] = frozenset()
    temporary: frozenset[str] = frozenset()
    message_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Incoming:
    sender: str  # the From address, or the envelope sender when From is missing
    display_name: str
    subject: str
    message_id: str
    in_reply_to: str
    references: tuple[str, ...]
    auto_submitted: bool  # Auto-Submitted other than "no"
    bulk: bool  # Precedence: bulk, junk or list
    x_loop: tuple[str, ...]
    text: str
    raw: bytes
    authentication_results: tuple[str, ...] = ()
    attachments: int = 0  # parts that are not the text (not published)
    # Read for what looks like a bounce only (inbound/parse.py): None for other mail.
    failures: Failures | None = None

    def is_automated(self, envelope_sender: str, loop_marker: str) -> bool:
        """True when no automatic reply may go to this message (RFC 3834 and loop rules).

        A null envelope sender is "", "<>" or MAILER-DAEMON: Postfix's pipe transport hands the
        null sender over as MAILER-DAEMON."""
        return is_null_sender(envelope_sender) or self.auto_submitted or self.bulk or self.carries_loop(loop_marker)

    def carries_loop(self, marker: str) -> bool:
        """True when an X-Loop header names `marker` (case, spaces and <> ignored)."""
        marker = _loop_value(marker)
        return bool(marker) and marker in (_loop_value(value) for value in self.x_loop)


def is_null_sender(address: str) -> bool:
    """True for the envelope sender of a bounce: "", "<>" or MAILER-DAEMON."""
    address = one_line(address).strip("<> ")
    return not address or address.partition("@")[0].lower() == "mailer-daemon"


def _loop_value(value: str) -> str:
    return one_line(value).strip("<> ").lower()

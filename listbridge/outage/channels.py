"""Outage events posted beyond mail: every apprise URL of [watch] notify and notify_file
(Mastodon, Matrix, ntfy, a webhook…) gets each incident update, durably, as the outbox does
mail. A post is a row: queued, sent, or retried with backoff; a restart posts nothing twice
and forgets nothing. Each post runs in a thread of its own, bounded by apprise's timeouts, so
that a dead or slow channel holds back neither mail nor the other channels. URLs hold tokens:
rows keep a digest and scheme://host, and nothing logs more.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import logging
import urllib.parse

import apprise
from sqlalchemy import select
from sqlalchemy.orm import Session

from listbridge.archive import pages
from listbridge.config import Settings
from listbridge.db import Database, insert_new
from listbridge.models import FAILED, QUEUED, SENT, ChannelPost, Incident, IncidentUpdate, utcnow
from listbridge.render import environment

log = logging.getLogger(__name__)

FIRST_RETRY = dt.timedelta(seconds=30)
MAX_RETRY = dt.timedelta(hours=1)
GIVE_UP = dt.timedelta(days=2)  # an event older than this is of no use to anyone
TIMEOUTS = {"cto": "10", "rto": "20"}  # apprise's connect and read timeouts, where the URL sets none


def digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def label(url: str) -> str:
    """What `outage status` shows of a channel: its scheme and host, no token.

    >>> label("mastodon://tok3n@social.example/"), label("json://127.0.0.1:8080/hook?x=1")
    ('mastodon://social.example', 'json://127.0.0.1:8080')
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def enqueue(session: Session, settings: Settings, change: IncidentUpdate) -> int:
    """A post of `change` to every channel; how many."""
    session.flush()  # the update's id
    count = 0
    for url in settings.watch.channels():
        row = {"update_id": change.id, "channel": digest(url), "label": label(url)[:255], "state": QUEUED}
        count += insert_new(session, ChannelPost, {**row, "attempts": 0, "next_attempt_at": utcnow(), "last_error": ""})
    return count


def deliver_due(db: Database, settings: Settings) -> tuple[int, int]:
    """Post everything due, each channel in a thread of its own; (sent, still queued)."""
    urls = {digest(u): u for u in settings.watch.channels()}
    now = utcnow()
    with db.transaction() as session:
        due = session.execute(
            select(ChannelPost, IncidentUpdate, Incident)
            .join(IncidentUpdate, IncidentUpdate.id == ChannelPost.update_id)
            .join(Incident, Incident.id == IncidentUpdate.incident_id)
            .where(ChannelPost.state == QUEUED, ChannelPost.next_attempt_at <= now)
            .order_by(ChannelPost.id)
        ).all()
        work = [(post.id, urls.get(post.channel), *text(settings, incident, change)) for post, change, incident in due]
        ages = {post.id: now - change.at for post, change, _ in due}
    if not work:
        return 0, 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(work))) as pool:
        outcomes = list(pool.map(lambda w: (w[0], _post(*w[1:])), work))
    sent = queued = 0
    with db.transaction() as session:
        for post_id, error in outcomes:
            post = session.get(ChannelPost, post_id)
            if post is None or post.state != QUEUED:
                continue
            post.attempts += 1
            if not error:
                post.state, post.done_at, post.last_error = SENT, utcnow(), ""
                sent += 1
                continue
            post.last_error = error
            if ages[post_id] > GIVE_UP:
                post.state, post.done_at = FAILED, utcnow()
            else:
                post.next_attempt_at = utcnow() + min(FIRST_RETRY * 2 ** (post.attempts - 1), MAX_RETRY)
                queued += 1
            log.warning("outage post to %s failed (attempt %d): %s", post.label, post.attempts, error)
    return sent, queued


def _post(url: str | None, title: str, body: str) -> str:
    """Post one event; "" when it went, else why not (never the URL)."""
    if url is None:
        return "no longer in [watch] notify"
    sender = apprise.Apprise()
    if not sender.add(_with_timeouts(url)):
        return "not an apprise URL"
    try:
        return "" if sender.notify(title=title, body=body) else "refused or unreachable"
    except Exception as exc:  # a plugin's own failure: this post alone
        return type(exc).__name__


def _with_timeouts(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    extra = {k: v for k, v in TIMEOUTS.items() if k not in query}
    if not extra:
        return url
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode({**query, **extra})))


def text(settings: Settings, incident: Incident, change: IncidentUpdate) -> tuple[str, str]:
    """The title and text of an event, in the first list's language (templates/channel)."""
    mlist = settings.lists[0]
    template = environment(mlist.templates).get_template(f"channel/{mlist.language}/{change.kind}.txt")
    rendered = template.render(
        list=mlist,
        nature=incident.nature,
        status=change.status,
        eta=change.eta,
        message=change.message,
        status_url=pages.status_url(settings.site),
    )
    title, _, body = rendered.partition("\n")
    return title.strip(), body.strip()


def status(session: Session) -> list[dict[str, object]]:
    """Each channel's last post, for `outage status`."""
    rows = session.scalars(select(ChannelPost).order_by(ChannelPost.id.desc())).all()
    last: dict[str, ChannelPost] = {}
    for row in rows:
        last.setdefault(row.channel, row)
    return [
        {
            "channel": row.label,
            "state": row.state,
            "attempts": row.attempts,
            "next_attempt": row.next_attempt_at.isoformat(timespec="seconds") if row.state == QUEUED else None,
            "last_error": row.last_error,
        }
        for row in last.values()
    ]

"""Outage events posted beyond mail: every apprise URL of [watch] notify and notify_file
(Mastodon, Matrix, ntfy, a webhook…) gets each incident update, durably, as the outbox does
mail. A post is a row: queued, sent, or retried with backoff; a restart posts nothing twice
and forgets nothing. Each post runs in a thread of its own, bounded by apprise's timeouts, so
that a dead or slow channel holds back neither mail nor the other channels. URLs hold tokens:
rows keep a digest and scheme://host, and nothing logs more.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import logging
import urllib.parse
from dataclasses import dataclass

import apprise
from sqlalchemy import select
from sqlalchemy.orm import Session

from listbridge.archive import pages
from listbridge.config import FORUM_SCHEME, ConfigError, Settings, secret_file
from listbridge.db import Database, insert_new
from listbridge.models import FAILED, QUEUED, SENT, ChannelPost, Incident, IncidentUpdate, utcnow
from listbridge.outage import forum
from listbridge.render import environment

log = logging.getLogger(__name__)

FIRST_RETRY = dt.timedelta(seconds=30)
MAX_RETRY = dt.timedelta(hours=1)
GIVE_UP = dt.timedelta(days=2)  # an event older than this is of no use to anyone
TIMEOUTS = {"cto": "10", "rto": "20"}  # apprise's connect and read timeouts, where the URL sets none


def local_time(when: dt.datetime | None) -> str:
    """A stored (UTC) time in the watcher's own zone, which it names: 2026-12-05 22:00 CET."""
    if when is None:
        return ""
    return when.replace(tzinfo=dt.UTC).astimezone().strftime("%Y-%m-%d %H:%M %Z")


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
        topics = _topics(session, {(change.incident_id, post.channel) for post, change, _ in due})
        work = [
            Work(
                post.id,
                urls.get(post.channel),
                change.kind,
                *text(settings, incident, change),
                topics.get((change.incident_id, post.channel), ""),
            )
            for post, change, incident in due
        ]
        ages = {post.id: now - change.at for post, change, _ in due}
    if not work:
        return 0, 0
    by_channel: dict[str | None, list[Work]] = {}
    for item in work:
        by_channel.setdefault(item.url, []).append(item)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(by_channel))) as pool:
        done = pool.map(lambda items: _post_in_order(settings, items), by_channel.values())
        outcomes = [outcome for outcomes_of_one in done for outcome in outcomes_of_one]
    sent = queued = 0
    with db.transaction() as session:
        for post_id, error, remote_id in outcomes:
            post = session.get(ChannelPost, post_id)
            if post is None or post.state != QUEUED:
                continue
            post.attempts += 1
            if not error:
                post.state, post.done_at, post.last_error, post.remote_id = SENT, utcnow(), "", remote_id
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


@dataclass(frozen=True)
class Work:
    """One post to make, read from the database before the threads start."""

    post_id: int
    url: str | None
    kind: str  # of the incident update: opened, updated, resolved
    title: str
    body: str
    topic: str  # the forum topic the outage opened, for a later event


def _topics(session: Session, keys: set[tuple[int, str]]) -> dict[tuple[int, str], str]:
    """The forum topic each (incident, channel) opened, where it did."""
    if not keys:
        return {}
    rows = session.execute(
        select(IncidentUpdate.incident_id, ChannelPost.channel, ChannelPost.remote_id)
        .join(IncidentUpdate, IncidentUpdate.id == ChannelPost.update_id)
        .where(IncidentUpdate.kind == "opened", ChannelPost.state == SENT, ChannelPost.remote_id != "")
        .where(IncidentUpdate.incident_id.in_(sorted({incident for incident, _ in keys})))
    ).all()
    return {(incident, channel): remote for incident, channel, remote in rows if (incident, channel) in keys}


def _post_in_order(settings: Settings, items: list[Work]) -> list[tuple[int, str, str]]:
    """One channel's posts, oldest first (a forum's replies follow its topic, in order); a
    failure stops the rest of that channel's batch, to keep the order."""
    outcomes: list[tuple[int, str, str]] = []
    topic = ""
    for item in items:
        if outcomes and outcomes[-1][1]:  # the one before failed: this one waits its turn
            outcomes.append((item.post_id, "waits for the post before it", ""))
            continue
        error, remote = _post(settings, dataclasses.replace(item, topic=item.topic or topic))
        topic = remote if item.kind == "opened" and remote else topic
        outcomes.append((item.post_id, error, remote))
    return outcomes


def _post(settings: Settings, work: Work) -> tuple[str, str]:
    """Post one event: ("", what the channel made of it) when it went, else (why not, "");
    never the URL."""
    if work.url is None:
        return "no longer in [watch] notify", ""
    if work.url.startswith(FORUM_SCHEME):
        return _forum(settings, work)
    sender = apprise.Apprise()
    if not sender.add(_with_timeouts(work.url)):
        return "not an apprise URL", ""
    try:
        return ("", "") if sender.notify(title=work.title, body=work.body) else ("refused or unreachable", "")
    except Exception as exc:  # a plugin's own failure: this post alone
        return type(exc).__name__, ""


def _forum(settings: Settings, work: Work) -> tuple[str, str]:
    """A topic for the outage's opening, a reply in it for each later event."""
    w = settings.watch
    try:
        key = secret_file(w.forum_api_key_file, "[watch] forum_api_key_file").strip()
        if work.kind == "opened":
            return "", forum.post(
                w.forum_url, key, w.forum_user, work.body, title=work.title, category=w.forum_category
            )
        if not work.topic:
            return "its topic is not made yet", ""  # the opening's post is retried first
        return "", forum.post(w.forum_url, key, w.forum_user, f"**{work.title}**\n\n{work.body}", topic=work.topic)
    except (ConfigError, forum.ForumError) as exc:
        return str(exc), ""


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
        planned=incident.planned_start is not None,
        window_start=local_time(incident.planned_start),
        window_end=local_time(incident.planned_end),
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

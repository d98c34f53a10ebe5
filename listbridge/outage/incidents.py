"""Incidents: declare, update, resolve; one notice per change to every subscriber and owner;
the status page and its feed in the site repo.

Each change and its notices are written in one transaction, so a crash or a restart can
neither lose a notice nor send it twice.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from listbridge.addresses import new_token
from listbridge.archive import pages, publish
from listbridge.archive.pages import atom_time
from listbridge.config import ListSettings, Settings
from listbridge.lists.context import ListContext
from listbridge.models import (
    IDENTIFIED,
    INVESTIGATING,
    MAINTENANCE,
    RESOLVED,
    SCHEDULED,
    Incident,
    IncidentUpdate,
    ProbeStatus,
    Subscriber,
    utcnow,
)
from listbridge.outage import channels
from listbridge.outage.probe import DOWN
from listbridge.outbound import compose, outbox
from listbridge.render import environment, render_mail
from listbridge.sanitize import clean_text, one_line

AUTOMATIC_NATURE = {
    "en": "the mail server does not answer",
    "fr": "le serveur de courrier ne répond pas",
}
# What a maintenance past its window says, as the outage it turns into.
OVERRUN = {
    "en": "The maintenance is taking longer than planned.",
    "fr": "La maintenance dure plus longtemps que prévu.",
}


class OutageError(Exception):
    """A maintainer's request that cannot be carried out; one sentence for the CLI."""


def current(session: Session) -> Incident | None:
    """The open incident, if any (there is at most one): an outage, or a maintenance under
    way; not one only scheduled."""
    return session.scalars(
        select(Incident).where(Incident.status.not_in((RESOLVED, SCHEDULED))).order_by(Incident.id.desc()).limit(1)
    ).first()


def parse_time(text: str) -> dt.datetime:
    """ISO 8601, or YYYY-MM-DD HH:MM in the watcher's own zone, as a stored (UTC) time."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise OutageError(f"{text!r} is not a time: give 2026-12-05 22:00 or 2026-12-05T22:00+01:00.") from None
    return when.astimezone(dt.UTC).replace(tzinfo=None)  # a naive time is taken as local


def upcoming(session: Session) -> list[Incident]:
    """The planned maintenances not started yet, soonest first."""
    return list(session.scalars(select(Incident).where(Incident.status == SCHEDULED).order_by(Incident.planned_start)))


def plan(
    session: Session,
    settings: Settings,
    nature: str,
    start: dt.datetime,
    end: dt.datetime,
    actor: str = "",
) -> Incident:
    """Announce a maintenance window (UTC times): the notice now, a reminder as it starts
    (start_due), and at its end "maintenance over" or an outage (end_due)."""
    nature = one_line(nature, 500)
    if not nature:
        raise OutageError("say what the maintenance is with --nature.")
    if end <= start:
        raise OutageError("the maintenance must end after it starts.")
    if end <= utcnow():
        raise OutageError("that window is over already.")
    incident = Incident(
        nature=nature,
        status=SCHEDULED,
        automatic=False,
        eta="",
        opened_at=utcnow(),
        planned_start=start,
        planned_end=end,
    )
    session.add(incident)
    session.flush()
    _change(session, settings, incident, "scheduled", SCHEDULED, "", "", actor)
    return incident


def start_due(session: Session, settings: Settings, now: dt.datetime | None = None) -> list[Incident]:
    """The maintenances whose window opens now: under way, and their reminder sent. An
    outage already open keeps them waiting."""
    now = now or utcnow()
    started = []
    for incident in upcoming(session):
        if incident.planned_start is None or incident.planned_start > now or current(session) is not None:
            continue
        incident.status = MAINTENANCE
        _change(session, settings, incident, "started", MAINTENANCE, "", "", "watch")
        started.append(incident)
    return started


def end_due(
    session: Session, settings: Settings, mx_answers: bool, mx_down: bool, now: dt.datetime | None = None
) -> Incident | None:
    """The maintenance whose window is over: resolved when the MX answers; an outage when it
    is down (the watcher resolves it once it is up again: "taking longer than planned"); else
    (a probe failed, not enough to call it down) left to the next probe."""
    now = now or utcnow()
    incident = current(session)
    if incident is None or incident.status != MAINTENANCE or incident.planned_end is None or incident.planned_end > now:
        return None
    if not mx_answers and not mx_down:
        return None
    if mx_answers:
        incident.status, incident.resolved_at = RESOLVED, now
        _change(session, settings, incident, "resolved", RESOLVED, "", "", "watch")
        return incident
    language = settings.lists[0].language
    incident.status, incident.automatic = IDENTIFIED, True  # the MX coming back resolves it
    message = OVERRUN.get(language, OVERRUN["en"])
    _change(session, settings, incident, "updated", IDENTIFIED, message, incident.eta, "watch")
    return incident


def updates(session: Session, incident: Incident) -> list[IncidentUpdate]:
    return list(
        session.scalars(
            select(IncidentUpdate).where(IncidentUpdate.incident_id == incident.id).order_by(IncidentUpdate.id)
        )
    )


def declare(
    session: Session,
    settings: Settings,
    nature: str,
    eta: str = "",
    status: str = INVESTIGATING,
    actor: str = "",
    automatic: bool = False,
) -> Incident:
    """Open an incident and announce it."""
    if current(session) is not None:
        raise OutageError("an outage is already open: use `outage update` or `outage resolve`.")
    # Maintainers' words go into subjects, pages and PostgreSQL (which takes no NUL): one line.
    nature, eta = one_line(nature, 500), one_line(eta, 200)
    if not nature:
        raise OutageError("say what broke with --nature.")
    if status == RESOLVED:
        raise OutageError("a new outage cannot start resolved.")
    incident = Incident(nature=nature.strip(), status=status, automatic=automatic, eta=eta.strip(), opened_at=utcnow())
    session.add(incident)
    session.flush()
    _change(session, settings, incident, "opened", status, "", eta.strip(), actor)
    return incident


def update(
    session: Session,
    settings: Settings,
    message: str,
    eta: str | None = None,
    status: str | None = None,
    actor: str = "",
) -> Incident:
    """Add news to the open incident and announce it."""
    incident = current(session)
    if incident is None:
        raise OutageError("no outage is open: use `outage declare`.")
    if status == RESOLVED:
        raise OutageError("use `outage resolve` to close the outage.")
    message, eta = clean_text(message), None if eta is None else one_line(eta, 200)
    if not message.strip() and eta is None and status is None:
        raise OutageError("give at least one of --message, --eta or --status.")
    incident.status = status or incident.status
    incident.eta = incident.eta if eta is None else eta.strip()
    _change(session, settings, incident, "updated", incident.status, message.strip(), incident.eta, actor)
    return incident


def resolve(
    session: Session, settings: Settings, message: str = "", actor: str = "", automatic_only: bool = False
) -> Incident | None:
    """Close the open incident and announce it. With `automatic_only` (the MX came back),
    an outage a maintainer declared is left to the maintainer."""
    incident = current(session)
    if incident is None:
        if automatic_only:
            return None
        raise OutageError("no outage is open.")
    if automatic_only and not incident.automatic:
        return None
    incident.status, incident.resolved_at = RESOLVED, utcnow()
    _change(session, settings, incident, "resolved", RESOLVED, clean_text(message).strip(), "", actor)
    return incident


def _change(
    session: Session, settings: Settings, incident: Incident, kind: str, status: str, message: str, eta: str, actor: str
) -> None:
    change = IncidentUpdate(
        incident_id=incident.id, at=utcnow(), kind=kind, status=status, message=message, eta=eta, actor=actor
    )
    session.add(change)
    session.flush()
    notify(session, settings, incident, change)
    channels.enqueue(session, settings, change)  # the same event, beyond mail


def notify(session: Session, settings: Settings, incident: Incident, change: IncidentUpdate) -> int:
    """One notice per subscriber of every list (own List-Unsubscribe), and one per owner, however
    many lists they own. While the watched MX is down, the subscribers whose mailboxes live on
    it (home_domains) get no opened or updated notice, which they could not read: only the
    resolved one, which tells what happened."""
    total = 0
    owners_told: set[str] = set()
    dark = unreachable_domains(session, settings) if change.kind != "resolved" else frozenset()
    history = updates(session, incident)
    for mlist in settings.lists:
        ctx = ListContext(settings, mlist)
        placeholder = new_token()  # each recipient's token in the footer's link (comments.broadcast)
        own = settings.web.unsubscribe_url(placeholder) if settings.relay.personalize else ""

        def text(unsubscribe_url: str, mlist: ListSettings = mlist, ctx: ListContext = ctx) -> tuple[str, str]:
            return render_mail(
                mlist,
                f"outage_{change.kind}",
                **{**ctx.common(), "unsubscribe_url": unsubscribe_url},
                nature=incident.nature,
                status=change.status,
                eta=change.eta,
                message=change.message,
                opened_at=incident.opened_at,
                automatic=incident.automatic,
                history=history,
                planned=incident.planned_start is not None,
                window_start=channels.local_time(incident.planned_start),
                window_end=channels.local_time(incident.planned_end),
                status_url=pages.status_url(settings.site),
                # The capsule's too, when the link above is the web page.
                gemini_status_url=pages.gemini_status_url(settings.site)
                if settings.site.web_url and settings.site.html
                else "",
            )

        subject, body = text(own)
        sender = ctx.address("owner")
        extra = {"Auto-Submitted": "auto-generated", "Precedence": "bulk"}
        message, count = outbox.enqueue_fanout(
            session,
            list_address=mlist.address,
            kind=f"outage-{change.kind}",
            envelope_from=ctx.address("owner"),
            body=compose.build(mlist, settings.smtp.separator, subject=subject, body=body, sender=sender, extra=extra),
            retry_days=settings.relay.retry_days,
            skip_domains=dark,
        )
        message.token_placeholder = placeholder
        total += count
        if mlist.owner and mlist.owner.lower() not in owners_told:
            owners_told.add(mlist.owner.lower())
            outbox.enqueue(
                session,
                list_address=mlist.address,
                kind=f"outage-{change.kind}-owner",
                envelope_from=ctx.address("owner"),
                body=compose.build(
                    mlist,
                    settings.smtp.separator,
                    subject=subject,
                    body=text("")[1] if own else body,  # no stand-in: the owner's copy is no list mail
                    sender=sender,
                    to=mlist.owner,
                    extra=extra,
                ),
                recipients=[mlist.owner],
                retry_days=settings.relay.retry_days,
            )
    return total


def unreachable_domains(session: Session, settings: Settings) -> frozenset[str]:
    """The home domains while the watcher sees the MX down (none otherwise, and at home)."""
    probe = session.get(ProbeStatus, 1)
    return settings.dark_domains() if probe is not None and probe.state == DOWN else frozenset()


def unreachable_count(session: Session, settings: Settings) -> int:
    """Subscribers who cannot read mail now: their mailbox is on the MX that is down."""
    dark = unreachable_domains(session, settings)
    if not dark:
        return 0
    query = select(func.count()).select_from(Subscriber).where(Subscriber.domain.in_(sorted(dark)))
    return session.scalar(query) or 0


def render_status(session: Session, settings: Settings) -> dict[str, str]:
    """status.gmi, one page per incident under status/, and status.xml (Atom). One set for
    the whole site, in the first list's language and templates (the README says so)."""
    mlist = settings.lists[0]
    env = environment(mlist.templates)
    incidents = list(session.scalars(select(Incident).order_by(Incident.opened_at.desc(), Incident.id.desc())))
    history = [(i, updates(session, i)) for i in incidents]
    open_now = next(((i, u) for i, u in history if i.status not in (RESOLVED, SCHEDULED)), None)
    planned = [
        {"nature": i.nature, "start": channels.local_time(i.planned_start), "end": channels.local_time(i.planned_end)}
        for i in reversed([i for i, _ in history if i.status == SCHEDULED])
    ]
    base = settings.site.base_url.rstrip("/")
    pages = {
        "status.gmi": env.get_template(f"status/{mlist.language}/status.gmi").render(
            list=mlist, current=open_now, history=history, upcoming=planned
        ),
        "status.xml": env.get_template(f"status/{mlist.language}/status.xml").render(
            list=mlist,
            history=history,
            base=base,
            updated=atom_time(max((u[-1].at for _, u in history if u), default=dt.datetime(1970, 1, 1))),
        ),
    }
    for incident, changes in history:
        pages[f"status/{incident.id}.gmi"] = env.get_template(f"status/{mlist.language}/incident.gmi").render(
            list=mlist, incident=incident, updates=changes
        )
    if settings.site.html:  # the same, for a www site (jinja escapes every text)
        feed = {"feed_title": mlist.title}
        pages["status.html"] = env.get_template(f"status/{mlist.language}/status.html").render(
            list=mlist, current=open_now, history=history, upcoming=planned, feed="status.xml", **feed
        )
        for incident, changes in history:
            pages[f"status/{incident.id}.html"] = env.get_template(f"status/{mlist.language}/incident.html").render(
                list=mlist, incident=incident, updates=changes, feed="../status.xml", **feed
            )
    return pages


def publish_status(session: Session, settings: Settings, message: str) -> str | None:
    """Write the status pages into the site repo and commit (and push) them. Rendered under
    the repo lock, like the comment pages, so an older render never overwrites a newer one.
    Committed as the first list (`listbridge <LIST@D>`): the status belongs to no one list."""
    repo = publish.repo_for(settings, settings.lists[0])
    with repo.lock():
        return publish.write_and_commit(repo, dict(render_status(session, settings)), message, settings.site.push)

"""Unsubscribing while home is dark: the watcher answers the one-click link of its outage
notices from its roster, over real HTTP; the subscriber gets no more notices, even after the
next roster import, and home, once back, processes the request the relay held for it."""

from __future__ import annotations

import dataclasses
import threading
import time
import urllib.parse
from collections import Counter

from sqlalchemy import select
from test_outage import MX
from test_web import one_click_header, post

from listbridge.config import WebSettings, build_settings
from listbridge.db import Database
from listbridge.inbound import dispatch
from listbridge.models import OutboxMessage, RosterImport, Subscriber
from listbridge.outage.watch import Watcher
from listbridge.web import unsubscribe
from listbridge.web.server import WebServer

from helpers import LIST, READERS, db_count, export_roster, free_port, wait_for, watcher_config


def notified(sink, marker: str) -> Counter:
    return Counter(a for r in sink.handler.received if marker in r.message["Subject"] for a in r.rcpt_tos)


def test_unsubscribing_at_the_watcher_during_an_outage(tmp_path, db_url, sink, home):
    mx = MX()
    mx.start()
    port = free_port()
    settings = dataclasses.replace(
        watcher_config(tmp_path, db_url, sink.port, f"127.0.0.1:{mx.port}"),
        web=WebSettings(listen=f"127.0.0.1:{port}", base_url=f"http://127.0.0.1:{port}"),
    )
    export_roster(home, settings.watch.roster)
    db = Database(settings.database.url)
    db.upgrade()
    watcher, stop = Watcher(settings, db), threading.Event()
    listener = WebServer(unsubscribe.make_app(db, settings, watcher.wakeup.set, watcher=True), "127.0.0.1", port)
    listener.start()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    leaving = READERS[0]
    try:
        wait_for(lambda: db_count(db, Subscriber) == len(READERS))
        mx.stop()
        wait_for(lambda: set(notified(sink, "Panne :")) >= set(READERS), timeout=30)
        (notice,) = [r for r in sink.handler.received if leaving in r.rcpt_tos and "Panne :" in r.message["Subject"]]
        link = one_click_header(notice)
        assert "Pour quitter la liste en un clic : " + link.group(1) in notice.message.get_content()
        owners = wait_for(
            lambda: [r for r in sink.handler.to("owner@example.org") if "Panne :" in r.message["Subject"]]
        )
        assert "/unsubscribe/" not in owners[0].message.get_content()  # no list mail: no link
        status, _, text = post(settings, urllib.parse.urlsplit(link.group(1)).path)
        assert status == 200 and "Vous avez quitté bla" in text, text
        assert db_count(db, Subscriber, Subscriber.address == leaving) == 0
        home_address = f"bla+unsubscribe-{link.group(2)}@bla.example.org"
        (forwarded,) = wait_for(lambda: sink.handler.to(home_address))  # held by the relay for home
        time.sleep(1.1)  # a new export has a new mtime
        export_roster(home, settings.watch.roster)  # home still lists them: it has not heard yet
        wait_for(lambda: db_count(db, RosterImport) == 2)
        assert db_count(db, Subscriber) == len(READERS) - 1
        mx.start()
        wait_for(lambda: set(notified(sink, "Retour à la normale")) >= set(READERS[1:]), timeout=30)
    finally:
        stop.set()
        thread.join()
        listener.stop()
        mx.stop()
        db.dispose()
    assert leaving not in notified(sink, "Retour à la normale")

    # Home, back, reads the request the relay held: the one source of truth follows.
    home_settings = build_settings(
        {"database": {"url": str(home.engine.url)}, "lists": [{"address": LIST, "language": "fr"}]}
    )
    message = dispatch.Received(forwarded.data, forwarded.mail_from, tuple(forwarded.rcpt_tos))
    (replies,) = dispatch.accept_many(home, home_settings, [message], lambda: {}).replies
    assert [r.code for r in replies] == [250]
    with home.transaction() as session:
        assert session.scalar(select(Subscriber.id).where(Subscriber.address == leaving)) is None
        assert session.scalars(select(OutboxMessage.kind)).all() == ["goodbye"]

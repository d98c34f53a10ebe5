"""Outage events beyond mail (apprise), against local HTTP servers that stand in for the
channels: one that takes the posts (apprise's json://), one refused, one that hangs, one that
comes back after failing; the full drill with mail beside them; nothing posted twice; the
tokens in the URLs never in a log line nor in `outage status`."""

from __future__ import annotations

import dataclasses
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from test_outage import MX, notices

from listbridge.config import ConfigError, build_settings
from listbridge.db import Database
from listbridge.models import ChannelPost, Subscriber
from listbridge.outage import channels
from listbridge.outage.watch import Watcher

from helpers import READERS, db_count, export_roster, wait_for, watcher_config

SECRET = "t0k3nsecret"


class Hook(http.server.ThreadingHTTPServer):
    """A webhook: records each JSON post; fails `failures` times first (500), or never answers."""

    def __init__(self, failures: int = 0, hang: bool = False) -> None:
        self.posts: list[dict] = []
        self.failures, self.hang, self.release = failures, hang, threading.Event()
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"json://127.0.0.1:{self.server_address[1]}/hook/{SECRET}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.server.hang:
            self.server.release.wait(30)
            return
        if self.server.failures > 0:
            self.server.failures -= 1
            self.send_response(500)
        else:
            assert self.path == f"/hook/{SECRET}" and self.headers["Content-Type"] == "application/json"
            self.server.posts.append({**json.loads(body), "at": time.monotonic()})
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hooks() -> Iterator[dict[str, Hook]]:
    made = {"ok": Hook(), "hangs": Hook(hang=True), "back": Hook(failures=2)}
    yield made
    for hook in made.values():
        hook.release.set()
        hook.shutdown()


def test_the_drill_posts_to_every_channel_beside_the_mail(tmp_path, db_url, sink, home, hooks, monkeypatch, caplog):
    monkeypatch.setattr(channels, "FIRST_RETRY", channels.dt.timedelta(seconds=0.3))
    monkeypatch.setattr(channels, "TIMEOUTS", {"cto": "1", "rto": "1"})
    monkeypatch.setattr("listbridge.outage.watch.CHANNEL_POLL", 0.2)
    with socket.socket() as closed:  # a port nobody listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        refused = f"json://127.0.0.1:{closed.getsockname()[1]}/hook/{SECRET}"
    mx = MX()
    mx.start()
    base = watcher_config(tmp_path, db_url, sink.port, f"127.0.0.1:{mx.port}")
    urls = [hooks["ok"].url(), refused, hooks["hangs"].url(), hooks["back"].url()]
    settings = dataclasses.replace(base, watch=dataclasses.replace(base.watch, notify=tuple(urls)))
    export_roster(home, settings.watch.roster)
    db = Database(settings.database.url)
    db.upgrade()
    watcher, stop = Watcher(settings, db), threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: db_count(db, Subscriber) == len(READERS))
        mx.stop()
        dark = time.monotonic()
        wait_for(lambda: hooks["ok"].posts, timeout=30)
        posted = hooks["ok"].posts[0]["at"] - dark
        wait_for(lambda: set(notices(sink, "down")) >= set(READERS), timeout=30)
        mailed = time.monotonic() - dark
        wait_for(lambda: hooks["back"].posts, timeout=30)  # after two refusals
        back = hooks["back"].posts[0]["at"] - dark
        print(
            f"\nMX dark -> webhook post {posted:.2f} s, last notice mailed by {mailed:.2f} s, "
            f"channel back after two failures {back:.2f} s"
        )
        assert hooks["ok"].posts[0]["title"].startswith("bla : panne")
        assert "Suivre la situation" in hooks["ok"].posts[0]["message"]
        mx.start()
        wait_for(lambda: len(hooks["ok"].posts) == 2, timeout=30)
        assert "retour à la normale" in hooks["ok"].posts[1]["title"]
    finally:
        stop.set()
        thread.join()
        mx.stop()
    with db.transaction() as session:
        shown = channels.status(session)
        states = {row.label: row.state for row in session.scalars(select(ChannelPost))}
    assert [c["state"] for c in shown if c["channel"] == channels.label(refused)] == ["queued"]
    assert states[channels.label(hooks["back"].url())] == "sent"
    assert channels.deliver_due(db, settings)[0] == 0  # a restart: nothing sent twice
    assert len(hooks["ok"].posts) == 2 and len(hooks["back"].posts) == 2
    assert SECRET not in caplog.text and SECRET not in json.dumps(shown)
    db.dispose()


def test_a_notify_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "notify"
    path.write_text(f"# channels\njson://127.0.0.1:9/hook/{SECRET}\n\n")
    path.chmod(0o644)
    settings = build_settings({"watch": {"notify": ["ntfy://ntfy.example/alerts"], "notify_file": str(path)}})
    with pytest.raises(ConfigError, match=r"can be read by others \(mode 644\)") as refused:
        settings.watch.channels()
    assert SECRET not in str(refused.value)
    path.chmod(0o600)
    assert settings.watch.channels() == ("ntfy://ntfy.example/alerts", f"json://127.0.0.1:9/hook/{SECRET}")
    case = build_settings({"watch": {"notify": ["json://H.example/Hook/AbC"]}})
    assert case.watch.notify == ("json://H.example/Hook/AbC",)  # tokens keep their case


class Forum(http.server.ThreadingHTTPServer):
    """Discourse's POST /posts.json, as its API documents it: Api-Key and Api-Username
    headers, JSON; title, raw and category make a topic, topic_id and raw a reply."""

    def __init__(self) -> None:
        self.topics: dict[int, list[dict]] = {}
        super().__init__(("127.0.0.1", 0), ForumHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class ForumHandler(http.server.BaseHTTPRequestHandler):
    server: Forum

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ok = (
            self.path == "/posts.json"
            and self.headers["Api-Key"] == SECRET
            and self.headers["Api-Username"] == "status-bot"
            and self.headers["Content-Type"] == "application/json"
            and isinstance(body.get("raw"), str)
        )
        if ok and "topic_id" in body and body["topic_id"] in self.server.topics:
            self.server.topics[body["topic_id"]].append(body)
            answer = {"id": 100 + len(self.server.topics[body["topic_id"]]), "topic_id": body["topic_id"]}
        elif ok and "topic_id" not in body and body.get("title") and body.get("category") == 7:
            topic = 40 + len(self.server.topics)
            self.server.topics[topic] = [body]
            answer = {"id": 100, "topic_id": topic}
        else:
            self.send_response(422)
            self.end_headers()
            return
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_a_forum_gets_a_topic_then_a_reply_per_event(tmp_path, db_url, make_settings, caplog):
    from listbridge.outage import incidents

    forum = Forum()
    key = tmp_path / "forum.key"
    key.write_text(SECRET + "\n")
    key.chmod(0o600)
    settings = make_settings(
        watch={
            "forum_url": f"http://127.0.0.1:{forum.server_address[1]}",
            "forum_api_key_file": str(key),
            "forum_user": "status-bot",
            "forum_category": 7,
        }
    )
    db = Database(settings.database.url)
    db.upgrade()
    try:
        with db.transaction() as session:
            incidents.declare(session, settings, "power cut", actor="test", eta="tonight")
            incidents.update(session, settings, "The ISP is on site.", actor="test")
        assert channels.deliver_due(db, settings) == (2, 0)  # the topic, then its reply, in order
        with db.transaction() as session:
            incidents.resolve(session, settings, "Power is back.", actor="test")
        assert channels.deliver_due(db, settings) == (1, 0)
        assert channels.deliver_due(db, settings) == (0, 0)
    finally:
        forum.shutdown()
        db.dispose()
    ((topic, posts),) = forum.topics.items()
    assert posts[0]["title"].startswith("bla: outage") and "tonight" in posts[0]["raw"]
    assert [p.get("topic_id") for p in posts[1:]] == [topic, topic]
    assert "The ISP is on site." in posts[1]["raw"] and "Power is back." in posts[2]["raw"]
    assert SECRET not in caplog.text

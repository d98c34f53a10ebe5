"""RFC 8058 one-click unsubscribe: BASE/unsubscribe/TOKEN, TOKEN the subscriber's own.

POST with the form field List-Unsubscribe=One-Click (what mail clients send, and the page's
button) removes the subscriber at once, with the goodbye mail; GET changes nothing, since
link scanners fetch every URL in a mail, and shows that button. An unknown token is 404; a
spent one says it is done. No cookie, no login, and no answer tells whether an address is
subscribed: only the holder of the token can ask. Bodies are limited to MAX_BODY bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from sqlalchemy.orm import Session

from listbridge.addresses import TOKEN_ALPHABET
from listbridge.config import Settings
from listbridge.db import Database
from listbridge.lists.subscriptions import SUBSCRIBED, Link, forward_unsubscribe, link, unsubscribe_by_link
from listbridge.render import render_page

log = logging.getLogger(__name__)

MAX_BODY = 1024
READ_SECONDS = 10.0
MAX_TOKEN = 64


def make_app(
    db: Database, settings: Settings, on_mail: Callable[[], None] = lambda: None, watcher: bool = False
) -> Callable[[], web.Application]:
    """A factory of the application (built in the listener's own thread and loop); `on_mail`
    is called once a mail is in the outbox (it wakes the delivery workers). The `watcher`'s
    answers from its roster and forwards each unsubscribe home by mail."""

    def build() -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.on_response_prepare.append(_no_server_header)
        handlers = Handlers(db, settings, on_mail, forward_unsubscribe if watcher else unsubscribe_by_link)
        app.add_routes(
            [web.get("/unsubscribe/{token}", handlers.page), web.post("/unsubscribe/{token}", handlers.one_click)]
        )
        return app

    return build


class Handlers:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        on_mail: Callable[[], None],
        leave: Callable[[Session, Settings, str], Link],
    ) -> None:
        self.db, self.settings, self.on_mail, self.leave = db, settings, on_mail, leave

    async def page(self, request: web.Request) -> web.Response:
        """GET: the page with its button, or where the link stands; nothing changes."""
        token = _token(request)
        if token is None:
            return self._not_found(request)
        return await self._answer(request, lambda: self._read(token), done=False)

    async def one_click(self, request: web.Request) -> web.Response:
        """POST List-Unsubscribe=One-Click: unsubscribe now."""
        token = _token(request)
        if token is None:
            return self._not_found(request)
        if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            raise web.HTTPUnsupportedMediaType(text="Send the form List-Unsubscribe=One-Click.\n")
        try:
            async with asyncio.timeout(READ_SECONDS):  # a client that sends slowly is cut off
                form = await request.post()  # over MAX_BODY: 413, from aiohttp
        except (ValueError, LookupError) as exc:  # no boundary, bytes not in its charset, …
            raise web.HTTPBadRequest(text="Send the form List-Unsubscribe=One-Click.\n") from exc
        except TimeoutError as exc:
            raise web.HTTPRequestTimeout(text="Too slow.\n") from exc
        if form.get("List-Unsubscribe") != "One-Click":
            raise web.HTTPBadRequest(text="Send the form List-Unsubscribe=One-Click.\n")
        return await self._answer(request, lambda: self._unsubscribe(token), done=True)

    def _read(self, token: str) -> Link:
        with self.db.transaction() as session:
            return link(session, self.settings, token)

    def _unsubscribe(self, token: str) -> Link:
        with self.db.transaction() as session:
            found = self.leave(session, self.settings, token)
        if found.state == SUBSCRIBED:
            self.on_mail()
        return found

    async def _answer(self, request: web.Request, work: Callable[[], Link], done: bool) -> web.Response:
        try:
            found = await asyncio.to_thread(work)  # the database: off the loop
        except Exception as exc:
            # Its class only: the text of a database error holds the statement's parameters.
            log.warning("one-click unsubscribe failed: %s", type(exc).__name__)
            page = render_page(self.settings.lists[0].templates, _language(request), "error")
            return web.Response(status=503, text=page, content_type="text/html", headers={"Retry-After": "60"})
        if found.mlist is None:
            return self._not_found(request)
        mlist = found.mlist
        state = "done" if done and found.state == SUBSCRIBED else found.state
        page = render_page(mlist.templates, mlist.language, "unsubscribe", state=state, title=mlist.title)
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})

    def _not_found(self, request: web.Request) -> web.Response:
        language = _language(request)
        page = render_page(self.settings.lists[0].templates, language, "unsubscribe", state="", title="")
        return web.Response(status=404, text=page, content_type="text/html")


async def _no_server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "listbridge"  # not aiohttp's and Python's versions


def _token(request: web.Request) -> str | None:
    """The URL's token, or None when it cannot be one."""
    token = request.match_info["token"]
    return token if 0 < len(token) <= MAX_TOKEN and set(token) <= TOKEN_ALPHABET else None


def _language(request: web.Request) -> str:
    """fr or en, as the reader's browser prefers, for a page about no list."""
    wanted = request.headers.get("Accept-Language", "").lower()
    return "fr" if wanted.startswith("fr") else "en"

"""An aiohttp application served from a thread with its own event loop: `serve` (and the
watcher) run it beside their other threads, and a failure in it stays in it."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)


class WebServer:
    """Listen on `host`:`port` for `make_app()`'s application until stop()."""

    def __init__(self, make_app: Callable[[], web.Application], host: str, port: int) -> None:
        self.make_app, self.host, self.port = make_app, host, port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="web", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start listening; raises OSError when the address cannot be bound."""
        self.thread.start()
        self._ready.wait()
        if self._error is not None:
            self.thread.join()
            raise self._error

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        # No access log: its lines would carry the tokens of the URLs.
        # Requests still running at stop() get 5 s, within the 10 s stop() waits for the thread.
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=5)
        try:
            self.loop.run_until_complete(runner.setup())
            self.loop.run_until_complete(web.TCPSite(runner, self.host, self.port).start())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            self.loop.run_until_complete(runner.cleanup())
            self.loop.close()
            return
        log.info("web listener on %s:%d", self.host, self.port)
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(runner.cleanup())
            self.loop.close()

"""The HTTP server around the app: uvicorn, with this service's connection settings.

`uvicorn_config(app, settings)` is what `momo serve` runs (and what the tests and benchmarks run):
- `keep_alive_timeout_s` (default 120 s): longer than the idle timeouts of the usual clients and
  load balancers, so that the client side closes an idle connection first. uvicorn's own default
  (5 s) equals httpx's keep-alive expiry: a client reusing a connection the server is closing gets
  a reset (measured on main: 15 resets in a 64-client, 5-minute soak).
- `header_timeout_s` (default 15 s): a connection must deliver a complete request head this long
  after it opens (or after the first byte of a later request on it); otherwise it is closed.
  uvicorn has no such timeout: 500 connections sending one header byte a second stayed open for
  minutes (slowloris). Request *bodies* are not timed here; the reverse proxy in front
  (deploy/nginx.conf: header, body and send timeouts) is the answer to slow clients in deployment.
- `limit_concurrency` (default 1024): connections plus running requests; above it uvicorn answers
  503 (and closes) instead of taking more. With the header timeout, this bounds what slow or
  stalled clients can hold.

The header timeout is a subclass of uvicorn's httptools protocol (uvicorn accepts a protocol class
as `http`; httptools comes with uvicorn[standard]), hooked on the parser callbacks that mark the
start and the end of a request head. tests/service/test_connections.py holds it to that.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus: close a connection whose request head is not complete
    `header_timeout_s` after the connection opened, or after the first byte of a later request."""

    header_timeout_s: float = 15.0
    _header_timer: asyncio.TimerHandle | None = None

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection whose request head took over %gs", self.header_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()  # a later request on a kept-alive connection: its head is timed too

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


def protocol_class(settings: Settings) -> type[HeaderTimeoutProtocol]:
    return type("MoMoHttpProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": settings.header_timeout_s})


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of `momo serve` for `app` (`overrides` win, e.g. a test's sockets)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": protocol_class(settings),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "limit_concurrency": settings.limit_concurrency,
        "timeout_graceful_shutdown": int(settings.request_timeout_s),
        "log_config": None,
        "access_log": False,  # the app logs one structured line per request (service/middleware.py)
        "lifespan": "on",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)

"""Connections: keep-alive outlives the usual client and load-balancer idle timeouts, a request head
must arrive within `header_timeout_s`, and `limit_concurrency` bounds what the server holds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import Settings
from tests.service.helpers import LiveServer, RawConnection, make_settings, request_head

# The idle timeouts of common clients and load balancers, in seconds: a server that closes an idle
# connection before they give it up races them (a request sent on a connection being closed).
CLIENT_IDLE_TIMEOUTS = {
    "httpx": 5,
    "aiohttp": 15,
    "node undici": 4,
    "go net/http": 90,
    "nginx upstream keepalive_timeout": 60,
    "AWS ALB": 60,
}


def test_the_default_keep_alive_outlives_common_client_idle_timeouts() -> None:
    default = Settings.model_fields["keep_alive_timeout_s"].default
    assert default > max(CLIENT_IDLE_TIMEOUTS.values())


@pytest.fixture(scope="module")
def defaults(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with the default connection settings (only the test's own store and keys)."""
    with LiveServer(make_settings(model_store, tmp_path_factory.mktemp("connections"))) as live:
        yield live


def test_an_idle_keep_alive_connection_is_kept_past_five_seconds(defaults: LiveServer) -> None:
    """uvicorn's own default (5 s) equals httpx's keep-alive expiry: a reused connection could be
    closing under the client. 6.5 s idle is past the old default (the wait is the scenario itself)."""
    with RawConnection(defaults.port) as conn:
        conn.send(request_head("GET", "/health"))
        assert conn.read_response()[0] == 200
        assert not conn.closed_by_server(within=6.5)
        conn.send(request_head("GET", "/health"))
        assert conn.read_response()[0] == 200


def test_keep_alive_timeout_is_a_setting(model_store: Path, tmp_path: Path) -> None:
    settings = make_settings(model_store, tmp_path, keep_alive_timeout_s=0.5)
    with LiveServer(settings) as live, RawConnection(live.port) as conn:
        conn.send(request_head("GET", "/health"))
        assert conn.read_response()[0] == 200
        assert conn.closed_by_server(within=15)


def test_a_slow_request_head_is_cut_off(model_store: Path, tmp_path: Path) -> None:
    """Slowloris: a connection that trickles its head (or sends nothing) is closed after
    `header_timeout_s`, while a normal request on another connection is served."""
    settings = make_settings(model_store, tmp_path, header_timeout_s=1.0)
    with LiveServer(settings) as live:
        with RawConnection(live.port) as silent, RawConnection(live.port) as trickle:
            trickle.send(b"GET /health HTTP/1.1\r\nHo")
            with live.client() as c:
                assert c.get("/health").status_code == 200
            assert trickle.closed_by_server(within=15)
            assert silent.closed_by_server(within=15)
        with RawConnection(live.port) as again:  # a later request on a kept-alive connection too
            again.send(request_head("GET", "/health"))
            assert again.read_response()[0] == 200
            again.send(b"GET /health HTTP/1.1\r\n")
            assert again.closed_by_server(within=15)


def test_connections_are_bounded_by_limit_concurrency(model_store: Path, tmp_path: Path) -> None:
    settings = make_settings(model_store, tmp_path, limit_concurrency=4, header_timeout_s=60.0)
    with LiveServer(settings) as live:
        held = [RawConnection(live.port) for _ in range(4)]
        try:
            for conn in held:
                conn.send(b"GET /health HTTP/1.1\r\n")  # a head that never completes
            with RawConnection(live.port) as extra:
                extra.send(request_head("GET", "/health"))
                assert extra.read_response()[0] == 503
        finally:
            for conn in held:
                conn.close()
        deadline = time.monotonic() + 15  # the slots are free again once the server sees them close
        while True:
            with RawConnection(live.port) as conn:
                conn.send(request_head("GET", "/health"))
                status = conn.read_response()[0]
            if status == 200 or time.monotonic() > deadline:
                break
        assert status == 200

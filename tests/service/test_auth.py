"""API keys: checked before any body byte is read, on every authenticated route (/metrics included
unless `metrics_auth` is off), held as secrets and never shown."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
import pytest

from tests.service.helpers import (
    API_KEY,
    LiveServer,
    RawConnection,
    assert_error,
    make_settings,
    request_head,
)


@pytest.mark.parametrize(
    ("path", "content_type", "length"),
    [
        ("/v1/embeddings", "application/json", 500_000),  # under max_body_bytes: it would be buffered
        ("/v1/files", "multipart/form-data; boundary=x", 200_000_000),  # streamed to disk
        ("/v1/collections/any/items", "application/json", 900_000),
    ],
)
@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_a_bad_key_is_refused_before_the_body_is_sent(
    server: LiveServer, path: str, content_type: str, length: int, key: str | None
) -> None:
    """The request announces a body and never sends it: the 401 must come anyway (the server read no
    body byte). Before the fix the server waited for the body, and this read timed out."""
    headers = {"Content-Type": content_type, "Content-Length": str(length)}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    with RawConnection(server.port, timeout=10) as conn:
        conn.send(request_head("POST", path, headers))
        status, response_headers, body = conn.read_response()
    assert status == 401, body
    assert response_headers["www-authenticate"] == "Bearer"
    error = json.loads(body)["error"]
    assert error["code"] == ("missing_api_key" if key is None else "invalid_api_key")
    with server.client() as c:
        assert c.get("/health").status_code == 200
        assert c.post("/v1/embeddings", json={"input": "still fine"}).status_code == 200


def test_malformed_json_from_an_unauthenticated_client_is_401_not_422(server: LiveServer) -> None:
    with server.client(key=None) as anon:
        r = anon.post("/v1/embeddings", content=b'{"input": ', headers={"Content-Type": "application/json"})
        assert_error(r, 401, "missing_api_key")
        upload = anon.post("/v1/files", files={"file": ("x.jsonl", io.BytesIO(b"{}\n"))})
        assert_error(upload, 401, "missing_api_key")


def test_metrics_need_a_key_unless_metrics_auth_is_off(
    server: LiveServer, model_store: Path, tmp_path: Path
) -> None:
    """/metrics names collections and models: by default it is behind the API key too."""
    with server.client(key=None) as anon, server.client() as ok:
        assert_error(anon.get("/metrics"), 401, "missing_api_key")
        assert ok.get("/metrics").status_code == 200
        assert anon.get("/health").status_code == 200 and anon.get("/ready").status_code == 200
    settings = make_settings(model_store, tmp_path, metrics_auth=False)
    with LiveServer(settings) as live, live.client(key=None) as anon:
        assert anon.get("/metrics").status_code == 200
        assert_error(anon.post("/v1/embeddings", json={"input": "x"}), 401, "missing_api_key")


def test_api_keys_are_secrets_that_never_show(model_store: Path, tmp_path: Path) -> None:
    settings = make_settings(model_store, tmp_path, api_keys=["k-secret-1", "k-secret-2"], log_level="info")
    for text in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert "k-secret-1" not in text and "k-secret-2" not in text
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    logger = logging.getLogger("momo")
    with LiveServer(settings) as live:
        logger.addHandler(handler)  # configure_logging (in create_app) replaced only its own handler
        try:
            with live.client(key="k-secret-2") as c:
                assert c.post("/v1/embeddings", json={"input": "x"}).status_code == 200
            with live.client(key="k-guess") as c:
                assert_error(c.post("/v1/embeddings", json={"input": "x"}), 401, "invalid_api_key")
        finally:
            logger.removeHandler(handler)
    logged = captured.getvalue()
    assert logged and "k-secret" not in logged and "k-guess" not in logged


def test_only_a_bearer_token_with_a_configured_key_opens_the_api(model_store: Path, tmp_path: Path) -> None:
    settings = make_settings(model_store, tmp_path)
    with LiveServer(settings) as live:
        for header in ("Bearer", "Bearer x y", f"bearer {API_KEY}x", f"Basic {API_KEY}", f"{API_KEY}"):
            r = httpx.post(
                f"{live.url}/v1/embeddings", json={"input": "x"}, headers={"Authorization": header}
            )
            assert r.status_code == 401, header
        r = httpx.post(
            f"{live.url}/v1/embeddings", json={"input": "x"}, headers={"Authorization": f"bearer {API_KEY}"}
        )
        assert r.status_code == 200  # the scheme is case-insensitive (RFC 7235)

"""Auth, every limit, bad images through every image endpoint, malformed requests, image URL guard."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.errors import APIError
from service.urls import ImageFetcher, forbidden_reason
from tests.momo.bad_images import bad_image_corpus, good_image_corpus
from tests.service.helpers import LiveServer, assert_error, b64, data_uri, make_settings, png_bytes


def test_auth_is_required_on_the_api_not_on_ops(server: LiveServer) -> None:
    with server.client(key=None) as anon, server.client(key="wrong-key") as wrong, server.client() as ok:
        for path, body in [
            ("/v1/embeddings", {"input": "x"}),
            ("/v1/classify", {"input": "x", "labels": ["a"]}),
            ("/v1/collections", {"name": "c"}),
        ]:
            error = assert_error(anon.post(path, json=body), 401, "missing_api_key")
            assert "Bearer" in error["message"]
            assert_error(wrong.post(path, json=body), 401, "invalid_api_key")
        assert_error(anon.get("/v1/models"), 401)
        assert_error(anon.post("/v1/models/momo-test:v2/activate"), 401)
        assert_error(
            httpx.post(
                f"{server.url}/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Basic abc"}
            ),
            401,
        )
        assert anon.get("/health").json() == {"status": "ok"}
        assert anon.get("/ready").status_code == 200
        assert_error(anon.get("/metrics"), 401)  # unless metrics_auth is off (test_auth.py)
        assert anon.get("/docs").status_code == 200 and anon.get("/openapi.json").status_code == 200
        assert_error(anon.get("/internal/test/kill-worker/text"), 401)
        assert_error(anon.get("/anything/else"), 401)  # deny by default
        assert ok.post("/v1/embeddings", json={"input": "x"}).status_code == 200


def test_auth_cannot_be_left_unconfigured(model_store: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MOMO_AUTH_DISABLED"):
        make_settings(model_store, tmp_path, api_keys=[])
    settings = make_settings(model_store, tmp_path, api_keys=[], auth_disabled=True)
    assert settings.auth_enabled is False


def test_request_limits(server: LiveServer, client: httpx.Client) -> None:
    assert_error(client.post("/v1/embeddings", json={"input": ["x"] * 17}), 400, "too_many_inputs")
    assert_error(
        client.post(
            "/v1/collections/any/items", json={"items": [{"id": str(i), "text": "x"} for i in range(17)]}
        ),
        404,
    )
    assert_error(client.post("/v1/embeddings", json={"input": "x" * 20_001}), 400, "text_too_long")
    big = png_bytes(seed=1, size=(200, 200))  # noise PNG: ~120 KB > the 64 KiB limit of this server
    assert len(big) > 64 * 1024
    assert_error(client.post("/v1/embeddings", json={"input": [data_uri(big)]}), 413, "image_too_large_bytes")
    wide = png_bytes(size=(2000, 200))  # 400k pixels > 512*512? no: 400k > 262k
    assert_error(
        client.post("/v1/embeddings", json={"input": [data_uri(wide)]}), 413, "image_too_many_pixels"
    )
    assert_error(client.post("/v1/classify", json={"input": "x", "labels": ["a"], "top_k": 5000}), 400)
    assert_error(
        client.post("/v1/vqa", json={"image": data_uri(png_bytes()), "question": "q", "top_k": 0}), 422
    )


def test_body_limit_counts_streamed_bytes(server: LiveServer, client: httpx.Client) -> None:
    limit = server.settings.max_body_bytes
    big = b'{"input": "' + b"a" * (limit + 10) + b'"}'
    assert_error(
        client.post("/v1/embeddings", content=big, headers={"Content-Type": "application/json"}),
        413,
        "request_too_large",
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield b'{"input": "'
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536
        yield b'"}'

    r = client.post("/v1/embeddings", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(r, 413, "request_too_large")
    assert client.post("/v1/embeddings", json={"input": "still answering"}).status_code == 200


def test_text_overflow_error_mode(model_store: Path, tmp_path: Path) -> None:
    settings = make_settings(model_store, tmp_path, text_overflow="error")
    with LiveServer(settings) as live, live.client() as c:
        error = assert_error(
            c.post("/v1/embeddings", json={"input": ["ok", "circle " * 100]}), 400, "text_too_long"
        )
        assert "input[1]" in error["message"]
        assert c.post("/v1/embeddings", json={"input": "short is fine"}).status_code == 200


def test_malformed_json_and_wrong_types_are_422_in_the_error_shape(client: httpx.Client) -> None:
    headers = {"Content-Type": "application/json"}
    for path in ("/v1/embeddings", "/v1/classify", "/v1/vqa", "/v1/collections", "/v1/collections/x/search"):
        assert_error(client.post(path, content=b'{"input": ', headers=headers), 422, "invalid_json")
        assert_error(client.post(path, content=b"[1, 2]", headers=headers), 422)
        assert_error(client.post(path, content=b"", headers=headers), 422)
    wrong = [
        ("/v1/embeddings", {"input": 5}),
        ("/v1/embeddings", {"input": [1.5]}),
        ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}),
        ("/v1/embeddings", {"input": {"x": 1}}),
        ("/v1/embeddings", {"input": [{"image": 3}]}),
        ("/v1/embeddings", {"input": "x", "dimensions": "many"}),
        ("/v1/classify", {"input": "x", "labels": "a"}),
        ("/v1/classify", {"input": "x", "labels": ["a"], "top_k": 0}),
        ("/v1/vqa", {"image": ["x"], "question": "q"}),
        ("/v1/collections", {"name": 3}),
        ("/v1/collections/x/items", {"items": "none"}),
        ("/v1/collections/x/search", {"query": "q", "top_k": "all"}),
    ]
    for path, body in wrong:
        error = assert_error(client.post(path, json=body), 422)
        assert error["type"] == "invalid_request_error"
    assert_error(client.get("/v1/nothing-here"), 404)
    assert_error(client.get("/v1/embeddings"), 405)


def test_bad_images_through_every_image_endpoint(server: LiveServer, client: httpx.Client) -> None:
    assert client.post("/v1/collections", json={"name": "bad-images"}).status_code == 201
    corpus = bad_image_corpus()
    corpus["not_base64"] = b"\xff"  # sent as text below
    for name, data in corpus.items():
        uri = "data:image/png;base64,@@@not-base64@@@" if name == "not_base64" else data_uri(data)
        requests = [
            ("/v1/embeddings", {"input": [uri]}),
            ("/v1/embeddings", {"input": [{"image": uri[uri.index(",") + 1 :]}]}),
            ("/v1/classify", {"input": {"image": uri}, "labels": ["a", "b"]}),
            ("/v1/classify", {"input": {"image": uri}, "head": "shapes"}),
            ("/v1/vqa", {"image": uri, "question": "what is it"}),
            ("/v1/collections/bad-images/items", {"items": [{"id": "x", "image": uri}]}),
            ("/v1/collections/bad-images/search", {"query": {"image": uri}}),
        ]
        for path, body in requests:
            r = client.post(path, json=body)
            assert 400 <= r.status_code < 500, (name, path, r.status_code, r.text)
            assert_error(r, r.status_code)
    assert client.get("/ready").status_code == 200
    assert client.get("/v1/collections/bad-images").json()["count"] == 0
    good = good_image_corpus()
    r = client.post("/v1/embeddings", json={"input": [data_uri(d) for d in list(good.values())[:16]]})
    assert r.status_code == 200, r.text


# --- image URLs ----------------------------------------------------------------------------------
FORBIDDEN_URLS = [
    "http://127.0.0.1/x.png",
    "http://127.1.2.3:8080/x.png",
    "http://10.0.0.7/x.png",
    "http://192.168.1.1/",
    "http://172.16.5.4/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/x.png",
    "http://0.0.0.0/",
    "http://[::ffff:127.0.0.1]/",
    "http://[fe80::1]/",
    "http://224.0.0.1/",
    "http://100.64.0.1/",
    "http://localhost/x.png",
    "https://localhost:8443/x.png",
]


def test_urls_are_off_by_default(client: httpx.Client) -> None:
    r = client.post("/v1/embeddings", json={"input": ["https://example.com/cat.png"], "modality": "image"})
    assert_error(r, 400, "image_urls_disabled")
    assert_error(
        client.post("/v1/vqa", json={"image": "https://example.com/cat.png", "question": "q"}),
        400,
        "image_urls_disabled",
    )


def test_private_targets_are_refused_before_connecting(model_store: Path, tmp_path: Path) -> None:
    settings = make_settings(model_store, tmp_path, image_urls_enabled=True)
    with LiveServer(settings) as live, live.client() as c:
        fetcher: ImageFetcher = live.services.fetcher
        for url in [
            *FORBIDDEN_URLS,
            "file:///etc/passwd",
            "ftp://example.com/x.png",
            "gopher://x/",
            "http://user:pw@example.com/x.png",
        ]:
            r = c.post("/v1/embeddings", json={"input": [{"image": url}]})
            error = assert_error(r, 400)
            assert error["code"] in ("image_url_forbidden", "invalid_image_url"), (url, error)
        assert fetcher.connections == 0  # no connection was ever attempted


def test_forbidden_reason_table() -> None:
    import ipaddress

    for address in [
        "127.0.0.1",
        "10.1.2.3",
        "172.31.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "::1",
        "0.0.0.0",
        "::ffff:10.0.0.1",
        "fe80::1",
        "fc00::1",
        "224.0.0.251",
        "255.255.255.255",
        "100.64.1.1",
        "2002:7f00:1::1",
        "240.0.0.1",
        "::",
    ]:
        assert forbidden_reason(ipaddress.ip_address(address)), address
    for address in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"]:
        assert forbidden_reason(ipaddress.ip_address(address)) is None, address


def test_url_fetch_pins_checked_addresses_and_caps_bytes() -> None:
    image = png_bytes(seed=4)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/redirect-private":
            return httpx.Response(302, headers={"location": "http://internal.test/x.png"})
        if request.url.path == "/huge":
            return httpx.Response(200, content=b"x" * 5000)
        return httpx.Response(200, content=image)

    dns = {
        "images.test": ["93.184.216.34"],
        "internal.test": ["10.0.0.5"],
        "rebind.test": ["93.184.216.34", "127.0.0.1"],
    }

    async def resolver(host: str, port: int) -> list[str]:
        if host not in dns:
            raise OSError("no such host")
        return dns[host]

    fetcher = ImageFetcher(
        enabled=True,
        timeout_s=5,
        max_bytes=4096,
        max_redirects=2,
        resolver=resolver,
        transport=httpx.MockTransport(handler),
    )

    async def scenario() -> None:
        assert await fetcher.fetch("http://images.test/cat.png") == image
        request = seen[-1]
        assert request.url.host == "93.184.216.34" and request.headers["host"] == "images.test"
        for url, code in [
            ("http://internal.test/x.png", "image_url_forbidden"),
            ("http://rebind.test/x.png", "image_url_forbidden"),
            ("http://images.test/redirect-private", "image_url_forbidden"),
            ("http://nowhere.test/x.png", "image_url_unresolvable"),
        ]:
            before = len(seen)
            with pytest.raises(APIError) as excinfo:
                await fetcher.fetch(url)
            assert excinfo.value.code == code, url
            assert all(r.url.host != "10.0.0.5" for r in seen[before:])
        with pytest.raises(APIError) as excinfo:
            await fetcher.fetch("http://images.test/huge")
        assert excinfo.value.status == 413

    asyncio.run(scenario())


def test_url_images_work_end_to_end_with_a_public_resolver(model_store: Path, tmp_path: Path) -> None:
    image = png_bytes(seed=8)
    settings = make_settings(model_store, tmp_path, image_urls_enabled=True)
    with LiveServer(settings) as live, live.client() as c:
        fetcher: ImageFetcher = live.services.fetcher

        async def resolver(host: str, port: int) -> list[str]:
            return ["93.184.216.34"]

        fetcher.resolver = resolver
        fetcher.transport = httpx.MockTransport(lambda request: httpx.Response(200, content=image))
        by_url = c.post("/v1/embeddings", json={"input": [{"image": "https://cdn.example.com/a.png"}]}).json()
        by_b64 = c.post("/v1/embeddings", json={"input": [{"image": b64(image)}]}).json()
        assert by_url["data"][0]["embedding"] == by_b64["data"][0]["embedding"]

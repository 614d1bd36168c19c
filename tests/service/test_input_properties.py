"""Property tests (hypothesis): arbitrary Unicode — lone surrogates, controls, NUL, very long strings —
in every text field of every request body goes through parsing and tokenising without an unhandled
exception: the answer is 2xx or 4xx, never 5xx, and the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.validation import RequestModel
from tests.service.helpers import LiveServer, data_uri, png_bytes

# Every code point, surrogates (category Cs) and controls (Cc) included.
ANY_CHARACTER = st.characters(exclude_categories=())
TEXT = st.one_of(
    st.text(ANY_CHARACTER, max_size=40),
    st.text(st.sampled_from(["\ud800", "\udfff", "\x00", "\x1b", "\u200b", "\ufffe", "\u0301"]), max_size=8),
    st.text(ANY_CHARACTER, min_size=1, max_size=4).map(lambda s: s * 6000),  # past max_text_chars
)
IMAGE = data_uri(png_bytes(size=(8, 8)))

# (path, body builder): one text field each, covering every text field of every request body.
FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "embeddings.input": ("/v1/embeddings", lambda t: {"input": t}),
    "embeddings.input[]": ("/v1/embeddings", lambda t: {"input": ["fine", t]}),
    "embeddings.input.text": ("/v1/embeddings", lambda t: {"input": [{"text": t}]}),
    "embeddings.model": ("/v1/embeddings", lambda t: {"input": "x", "model": t}),
    "embeddings.user": ("/v1/embeddings", lambda t: {"input": "x", "user": t}),
    "classify.input": ("/v1/classify", lambda t: {"input": t, "labels": ["a", "b"]}),
    "classify.labels": ("/v1/classify", lambda t: {"input": "x", "labels": ["a", t]}),
    "classify.template": (
        "/v1/classify",
        lambda t: {"input": "x", "labels": ["a"], "template": t + "{label}"},
    ),
    "classify.head": ("/v1/classify", lambda t: {"input": "x", "head": t}),
    "vqa.question": ("/v1/vqa", lambda t: {"image": IMAGE, "question": t}),
    "collections.name": ("/v1/collections", lambda t: {"name": t}),
    "collections.description": ("/v1/collections", lambda t: {"name": "p-desc", "description": t}),
    "collections.metadata": ("/v1/collections", lambda t: {"name": "p-meta", "metadata": {t: [t, {"k": t}]}}),
    "items.id": ("/v1/collections/props/items", lambda t: {"items": [{"id": t, "text": "x"}]}),
    "items.text": ("/v1/collections/props/items", lambda t: {"items": [{"id": "a", "text": t}]}),
    "items.metadata": (
        "/v1/collections/props/items",
        lambda t: {"items": [{"id": "m", "text": "x", "metadata": {t: t, "n": {"deep": [t]}}}]},
    ),
    "items.delete": ("/v1/collections/props/items/delete", lambda t: {"ids": [t]}),
    "search.query": ("/v1/collections/props/search", lambda t: {"query": t}),
    "search.query.text": ("/v1/collections/props/search", lambda t: {"query": {"text": t}}),
    "search.filter": (
        "/v1/collections/props/search",
        lambda t: {"query": "x", "filter": {"metadata": {t: t}}},
    ),
    "fine-tunes.dataset_path": ("/v1/fine-tunes", lambda t: {"task": "vqa", "dataset_path": t}),
    "fine-tunes.model": ("/v1/fine-tunes", lambda t: {"task": "vqa", "dataset_path": "none", "model": t}),
    "fine-tunes.output_name": (
        "/v1/fine-tunes",
        lambda t: {"task": "vqa", "dataset_path": "none", "output_name": t},
    ),
    "fine-tunes.head": ("/v1/fine-tunes", lambda t: {"task": "vqa", "dataset_path": "none", "head": t}),
}


@pytest.fixture(scope="module")
def props(server: LiveServer) -> LiveServer:
    with server.client() as c:
        assert c.post("/v1/collections", json={"name": "props"}).status_code == 201
    return server


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_any_text_in_any_field_is_never_a_5xx(props: LiveServer, field: str) -> None:
    path, build = FIELDS[field]
    with props.client() as client:

        @settings(
            max_examples=30,
            deadline=None,
            derandomize=True,  # seeded: the same examples on every run
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(text=TEXT)
        def check(text: str) -> None:
            # ensure_ascii: surrogates travel as \\udXXX escapes, which JSON allows
            content = json.dumps(build(text)).encode()
            r = client.post(path, content=content, headers={"Content-Type": "application/json"})
            assert r.status_code < 500, (field, text[:80], r.status_code, r.text[:300])
            assert "error" in r.json() or r.status_code < 300
            r.content.decode("utf-8")  # strict: whatever came back is valid UTF-8

        check()
        assert client.get("/health").status_code == 200
        assert client.post("/v1/embeddings", json={"input": "a normal request"}).status_code == 200


def test_every_request_body_is_checked_at_the_edge(client: httpx.Client) -> None:
    """Each operation that takes a JSON body reads it into a `RequestModel` (the invalid-Unicode
    check); found from the OpenAPI document, so a new route cannot slip past."""
    import service.jobs.schemas
    import service.schemas

    models = {**vars(service.schemas), **vars(service.jobs.schemas)}
    schema = client.get("/openapi.json").json()
    bodies = {
        f"{method.upper()} {path}": operation["requestBody"]["content"]
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }
    assert len(bodies) >= 8, bodies
    for name, content in bodies.items():
        if "multipart/form-data" in content:  # Starlette decodes form fields strictly (Latin-1 fallback)
            continue
        model = models[content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
        assert issubclass(model, RequestModel), (name, model)


def test_surrogate_pairs_written_as_two_escapes_are_one_valid_character(client: httpx.Client) -> None:
    """`"\\ud83d\\ude00"` is a valid JSON spelling of U+1F600: it must be accepted, not refused."""
    r = client.post(
        "/v1/embeddings",
        content=b'{"input": "smile \\ud83d\\ude00"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text

"""POST /v1/embeddings: values equal the runtime's own, OpenAI compatibility, images, usage."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
from openai import AuthenticationError, OpenAI

from momo.preprocess import decode_image, preprocess_images
from tests.service.helpers import API_KEY, LiveServer, assert_error, b64, data_uri, png_bytes

TEXTS = ["a red circle to the left of a blue square", "how many shapes are there", "a photo of a sneaker"]


def runtime_texts(server: LiveServer, texts: list[str]) -> np.ndarray:
    handle = server.engine.current
    batch = handle.tokenizer.encode_batch(texts, max_length=handle.config.max_text_len)
    return np.asarray(handle.runtime.encode_texts(batch.input_ids, batch.attention_mask))


def runtime_images(server: LiveServer, images: list[bytes]) -> np.ndarray:
    handle = server.engine.current
    pixels = preprocess_images([decode_image(b) for b in images], handle.config)
    return np.asarray(handle.runtime.encode_images(pixels))


def vectors(body: dict) -> np.ndarray:
    rows = []
    for item in sorted(body["data"], key=lambda d: d["index"]):
        emb = item["embedding"]
        rows.append(
            np.frombuffer(base64.b64decode(emb), dtype="<f4") if isinstance(emb, str) else np.asarray(emb)
        )
    return np.stack(rows).astype(np.float32)


def test_text_embeddings_equal_the_runtime(server: LiveServer, client: httpx.Client) -> None:
    r = client.post("/v1/embeddings", json={"input": TEXTS, "model": "momo"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "momo-test:v1"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    got = vectors(body)
    assert got.shape == (3, server.engine.current.dim)
    np.testing.assert_allclose(got, runtime_texts(server, TEXTS), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    handle = server.engine.current
    tokens = sum(handle.tokenizer.encode_batch(TEXTS, max_length=handle.config.max_text_len).num_tokens)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens, "truncated_inputs": 0}
    assert r.headers["x-request-id"]


def test_single_string_and_base64_format(server: LiveServer, client: httpx.Client) -> None:
    as_float = client.post("/v1/embeddings", json={"input": TEXTS[0]}).json()
    as_b64 = client.post("/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"}).json()
    assert isinstance(as_b64["data"][0]["embedding"], str)
    np.testing.assert_allclose(vectors(as_b64), vectors(as_float), atol=0)
    np.testing.assert_allclose(vectors(as_float)[0], runtime_texts(server, TEXTS[:1])[0], atol=1e-5)


def test_images_as_data_uri_object_and_forced_modality(server: LiveServer, client: httpx.Client) -> None:
    red, noise = png_bytes((220, 20, 20)), png_bytes(seed=3, size=(37, 23), fmt="JPEG")
    r = client.post("/v1/embeddings", json={"input": [data_uri(red), {"image": b64(noise)}, "a red square"]})
    assert r.status_code == 200, r.text
    got = vectors(r.json())
    np.testing.assert_allclose(got[:2], runtime_images(server, [red, noise]), atol=1e-5)
    np.testing.assert_allclose(got[2], runtime_texts(server, ["a red square"])[0], atol=1e-5)
    handle = server.engine.current
    image_tokens = handle.config.num_patches + 1
    text_tokens = handle.tokenizer.encode_batch(["a red square"], max_length=16).num_tokens[0]
    assert r.json()["usage"]["prompt_tokens"] == 2 * image_tokens + text_tokens
    # raw base64 strings are images when modality says so
    forced = client.post("/v1/embeddings", json={"input": [b64(red)], "modality": "image"})
    assert forced.status_code == 200, forced.text
    np.testing.assert_allclose(vectors(forced.json())[0], got[0], atol=1e-6)
    # and a data URI is text when modality says text? No: explicit {"image"} with modality text conflicts
    assert_error(
        client.post("/v1/embeddings", json={"input": [{"image": b64(red)}], "modality": "text"}),
        400,
        "modality_conflict",
    )


def test_openai_client_round_trip(server: LiveServer) -> None:
    oai = OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    result = oai.embeddings.create(model="momo-test", input=TEXTS)  # the client asks for base64 by default
    got = np.asarray([d.embedding for d in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, runtime_texts(server, TEXTS), atol=1e-5)
    assert result.model == "momo-test:v1" and result.usage.prompt_tokens > 0
    floats = oai.embeddings.create(model="momo", input="hello", encoding_format="float")
    assert len(floats.data[0].embedding) == server.engine.current.dim
    image = png_bytes(seed=5)
    images = oai.embeddings.create(model="momo", input=[b64(image)], extra_body={"modality": "image"})
    np.testing.assert_allclose(images.data[0].embedding, runtime_images(server, [image])[0], atol=1e-5)
    uris = oai.embeddings.create(model="momo", input=[data_uri(image)])
    np.testing.assert_allclose(uris.data[0].embedding, images.data[0].embedding, atol=1e-6)
    with pytest.raises(AuthenticationError) as excinfo:
        OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="momo", input="x"
        )
    assert excinfo.value.status_code == 401


def test_dimensions_model_and_token_arrays(server: LiveServer, client: httpx.Client) -> None:
    dim = server.engine.current.dim
    assert client.post("/v1/embeddings", json={"input": "x", "dimensions": dim}).status_code == 200
    assert_error(
        client.post("/v1/embeddings", json={"input": "x", "dimensions": dim // 2}),
        400,
        "unsupported_dimensions",
    )
    assert_error(
        client.post("/v1/embeddings", json={"input": "x", "model": "text-embedding-3-small"}),
        404,
        "model_not_found",
    )
    for name in ("momo-test", "momo-test:v1", "momo", None):
        assert client.post("/v1/embeddings", json={"input": "x", "model": name}).status_code == 200
    assert_error(
        client.post("/v1/embeddings", json={"input": [101, 2023, 102]}), 400, "token_input_unsupported"
    )
    assert_error(client.post("/v1/embeddings", json={"input": [[101, 102]]}), 400, "token_input_unsupported")
    assert_error(client.post("/v1/embeddings", json={"input": []}), 400, "empty_input")


def test_long_text_is_truncated_and_reported(server: LiveServer, client: httpx.Client) -> None:
    long_text = " ".join(["circle"] * 200)
    r = client.post("/v1/embeddings", json={"input": [long_text, "short"]})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["truncated_inputs"] == 1
    max_len = server.engine.current.config.max_text_len
    assert usage["prompt_tokens"] == max_len + runtime_tokens(server, "short")
    np.testing.assert_allclose(vectors(r.json())[0], runtime_texts(server, [long_text])[0], atol=1e-5)


def runtime_tokens(server: LiveServer, text: str) -> int:
    handle = server.engine.current
    return int(handle.tokenizer.encode_batch([text], max_length=handle.config.max_text_len).num_tokens[0])

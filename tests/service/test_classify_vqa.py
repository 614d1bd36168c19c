"""POST /v1/classify (zero-shot and heads) and POST /v1/vqa against the runtime's own outputs."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from momo.preprocess import decode_image, preprocess_images
from service.routers import classify
from tests.service.helpers import SHAPES, TOPICS, LiveServer, assert_error, data_uri, make_settings, png_bytes

LABELS = ["circle", "square", "sneaker", "dog", "ankle boot"]


def _texts(server: LiveServer, texts: list[str]) -> np.ndarray:
    handle = server.engine.current
    batch = handle.tokenizer.encode_batch(texts, max_length=handle.config.max_text_len)
    return np.asarray(handle.runtime.encode_texts(batch.input_ids, batch.attention_mask))


def _pixels(server: LiveServer, image: bytes) -> np.ndarray:
    return preprocess_images([decode_image(image)], server.engine.current.config)


def _ids(server: LiveServer, text: str) -> tuple[np.ndarray, np.ndarray]:
    handle = server.engine.current
    batch = handle.tokenizer.encode_batch([text], max_length=handle.config.max_text_len)
    return batch.input_ids, batch.attention_mask


def test_zero_shot_image_matches_runtime_similarity_ranking(server: LiveServer, client: httpx.Client) -> None:
    image = png_bytes(seed=11)
    r = client.post("/v1/classify", json={"input": {"image": data_uri(image)}, "labels": LABELS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "zero-shot" and body["template"] == "a photo of a {label}"
    ranked = body["data"][0]["labels"]
    assert sum(x["score"] for x in ranked) == pytest.approx(1.0, abs=1e-5)
    handle = server.engine.current
    img = np.asarray(handle.runtime.encode_images(_pixels(server, image)))[0]
    sims = _texts(server, [f"a photo of a {label}" for label in LABELS]) @ img
    expected = [LABELS[j] for j in np.argsort(-sims, kind="stable")]
    assert [x["label"] for x in ranked] == expected
    probs = np.exp(sims / handle.temperature) / np.exp(sims / handle.temperature).sum()
    np.testing.assert_allclose([x["score"] for x in ranked], np.sort(probs)[::-1], atol=1e-4)


def test_zero_shot_text_template_and_top_k(server: LiveServer, client: httpx.Client) -> None:
    r = client.post(
        "/v1/classify",
        json={
            "input": ["a black and white photo of a dress", "a fox"],
            "labels": LABELS,
            "template": "an emoji of {label}",
            "top_k": 2,
        },
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 2 and all(len(d["labels"]) == 2 for d in data)
    text_vec = _texts(server, ["a black and white photo of a dress"])[0]
    sims = _texts(server, [f"an emoji of {label}" for label in LABELS]) @ text_vec
    assert [x["label"] for x in data[0]["labels"]] == [
        LABELS[j] for j in np.argsort(-sims, kind="stable")[:2]
    ]
    assert_error(
        client.post("/v1/classify", json={"input": "x", "labels": LABELS, "template": "no slot"}),
        400,
        "invalid_template",
    )
    assert_error(client.post("/v1/classify", json={"input": "x"}), 400, "missing_labels")
    assert_error(client.post("/v1/classify", json={"input": "x", "labels": ["a", " "]}), 400, "invalid_label")
    # '{label}' is substituted literally: format-string tricks are just text
    ok = client.post(
        "/v1/classify", json={"input": "x", "labels": ["{0}", "a"], "template": "{label} {__class__}"}
    )
    assert ok.status_code == 200, ok.text


def test_named_heads(server: LiveServer, client: httpx.Client) -> None:
    handle = server.engine.current
    image = png_bytes(seed=12)
    r = client.post("/v1/classify", json={"input": {"image": data_uri(image)}, "head": "shapes"})
    assert r.status_code == 200, r.text
    ranked = r.json()["data"][0]["labels"]
    logits = np.asarray(handle.runtime.head_logits("shapes", pixels=_pixels(server, image)))[0]
    assert [x["label"] for x in ranked] == [SHAPES[j] for j in np.argsort(-logits, kind="stable")]
    assert sum(x["score"] for x in ranked) == pytest.approx(1.0, abs=1e-5)

    r = client.post("/v1/classify", json={"input": ["you will be successful in your work"], "head": "topic"})
    ids, mask = _ids(server, "you will be successful in your work")
    logits = np.asarray(handle.runtime.head_logits("topic", input_ids=ids, attention_mask=mask))[0]
    assert [x["label"] for x in r.json()["data"][0]["labels"]] == [TOPICS[j] for j in np.argsort(-logits)]

    r = client.post(
        "/v1/classify", json={"input": {"image": data_uri(image), "text": "a red circle"}, "head": "itm"}
    )
    assert r.status_code == 200, r.text
    match = {x["label"]: x["score"] for x in r.json()["data"][0]["labels"]}["match"]
    ids, mask = _ids(server, "a red circle")
    expected = float(np.asarray(handle.runtime.score_pairs(_pixels(server, image), ids, mask))[0])
    assert match == pytest.approx(expected, abs=1e-5)

    assert_error(client.post("/v1/classify", json={"input": "x", "head": "nope"}), 404, "head_not_found")
    assert_error(client.post("/v1/classify", json={"input": "x", "head": "shapes"}), 400, "modality_conflict")
    assert_error(client.post("/v1/classify", json={"input": "x", "head": "topic", "labels": ["a"]}), 400)


def test_vqa_answers_match_runtime(server: LiveServer, client: httpx.Client) -> None:
    image = png_bytes(seed=13)
    r = client.post(
        "/v1/vqa", json={"image": data_uri(image), "question": "what color is the circle", "top_k": 3}
    )
    assert r.status_code == 200, r.text
    answers = r.json()["answers"]
    ids, mask = _ids(server, "what color is the circle")
    expected = server.engine.current.runtime.answer(_pixels(server, image), ids, mask, top_k=3)[0]
    assert [a["answer"] for a in answers] == [a for a, _ in expected]
    np.testing.assert_allclose([a["score"] for a in answers], [p for _, p in expected], atol=1e-5)
    assert answers == sorted(answers, key=lambda a: -a["score"])
    assert_error(
        client.post("/v1/vqa", json={"image": data_uri(image), "question": "  "}), 400, "invalid_question"
    )
    assert_error(client.post("/v1/vqa", json={"image": data_uri(image)}), 422)


def test_vqa_without_a_vqa_head_is_a_clear_4xx(model_store: Path, tmp_path: Path) -> None:
    settings = make_settings(model_store, tmp_path / "data", model="momo-bare:v1")
    with LiveServer(settings) as live, live.client() as c:
        r = c.post("/v1/vqa", json={"image": data_uri(png_bytes()), "question": "what is it"})
        error = assert_error(r, 400, "vqa_unavailable")
        assert "no 'vqa' head" in error["message"]
        assert c.post("/v1/embeddings", json={"input": "still fine"}).status_code == 200


def test_label_cache_entries_evicted_during_an_await_are_not_lost(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Request A finds one prompt cached and awaits the embedding of another; meanwhile request B
    fills the cache and evicts A's cached prompt. A must still answer (it used to raise KeyError)."""
    monkeypatch.setattr(classify, "LABEL_CACHE_SIZE", 4)
    handle, settings = server.engine.current, server.settings
    original = handle.embed_texts
    cached, fresh = "cache race: kept", "cache race: new"
    others = [f"cache race: other {i}" for i in range(4)]

    async def scenario() -> np.ndarray:
        await classify.label_embeddings(handle, [cached], settings)
        gate, entered = asyncio.Event(), asyncio.Event()

        async def first_call_waits(texts: list[str], params: list[str] | None = None) -> Any:
            if not entered.is_set():
                entered.set()
                await gate.wait()
            return await original(texts, params)

        monkeypatch.setattr(handle, "embed_texts", first_call_waits)
        a = asyncio.ensure_future(classify.label_embeddings(handle, [cached, fresh], settings))
        await entered.wait()  # A is awaiting the embedding of `fresh`
        await classify.label_embeddings(handle, others, settings)  # B evicts `cached`
        assert cached not in handle.label_cache
        gate.set()
        vectors, tokens = await a
        assert tokens > 0
        return vectors

    vectors = asyncio.run(scenario())
    np.testing.assert_allclose(vectors, _texts(server, [cached, fresh]), atol=1e-5)


def test_concurrent_zero_shot_requests_with_many_labels_never_fail(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(classify, "LABEL_CACHE_SIZE", 16)
    vocabulary = [f"thing {i}" for i in range(60)]

    def call(i: int) -> tuple[int, str]:
        rng = random.Random(i)
        labels = rng.sample(vocabulary, rng.randint(5, 30))
        with server.client() as c:
            r = c.post("/v1/classify", json={"input": f"text {i}", "labels": labels})
        return r.status_code, r.text[:200]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(96)))
    assert [r for r in results if r[0] != 200] == []

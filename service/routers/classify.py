"""POST /v1/classify — zero-shot over the caller's labels, or a fine-tuned head of the model."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter

from service.deps import InferenceDep, Services
from service.errors import APIError, bad_request
from service.inputs import (
    Parsed,
    check_model,
    check_texts,
    image_tokens,
    load_images,
    parse_inputs,
    tokenize,
)
from service.model_handle import ModelHandle, PairPayload
from service.routers.embeddings import embed_parsed, usage
from service.schemas import ClassifyRequest, ClassifyResponse
from service.settings import Settings

router = APIRouter(tags=["classification"])
LABEL_CACHE_SIZE = 8192


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def ranked(
    scores: np.ndarray, probs: np.ndarray, labels: list[str], top_k: int | None
) -> list[dict[str, object]]:
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    return [{"label": labels[j], "score": float(probs[j])} for j in order]


async def label_embeddings(
    handle: ModelHandle, prompts: list[str], settings: Settings
) -> tuple[np.ndarray, int]:
    """Text embeddings of the prompts, cached per served model (LRU); returns (vectors, tokens used).

    The vectors this request uses are taken into a dict of its own before it awaits anything: while
    it waits for the embeddings of its new prompts, other requests fill the cache and may evict the
    entries it found there."""
    cache = handle.label_cache
    found = {p: cache[p] for p in dict.fromkeys(prompts) if p in cache}
    missing = [p for p in dict.fromkeys(prompts) if p not in found]
    tokens = 0
    if missing:
        params = [f"labels[{prompts.index(p)}]" for p in missing]
        check_texts(missing, settings, params)
        embedded = await handle.embed_texts(missing, params)
        vectors = embedded.vectors
        tokens = embedded.total_tokens
        found.update(zip(missing, vectors, strict=True))
    for prompt in dict.fromkeys(prompts):  # most recently used last; new entries evict the oldest
        cache[prompt] = found[prompt]
        cache.move_to_end(prompt)
    while len(cache) > LABEL_CACHE_SIZE:
        cache.popitem(last=False)
    return np.stack([found[p] for p in prompts]), tokens


async def zero_shot(
    handle: ModelHandle,
    parsed: list[Parsed],
    body: ClassifyRequest,
    services: Services,
) -> dict[str, object]:
    settings = services.settings
    labels = body.labels or []
    if not labels:
        raise bad_request(
            "zero-shot classification needs 'labels' (or name a fine-tuned 'head')",
            "missing_labels",
            "labels",
        )
    if len(labels) > settings.max_labels:
        raise bad_request(
            f"{len(labels)} labels; the limit is {settings.max_labels}", "too_many_labels", "labels"
        )
    for i, label in enumerate(labels):
        if not label.strip():
            raise bad_request(f"labels[{i}] is empty", "invalid_label", f"labels[{i}]")
    template = body.template if body.template is not None else settings.classify_template
    if "{label}" not in template:
        raise bad_request("template must contain '{label}'", "invalid_template", "template")
    if any(p.modality == "pair" for p in parsed):
        raise bad_request(
            "zero-shot classification takes an image or a text, not a pair", "invalid_input", "input"
        )
    prompts = [template.replace("{label}", label) for label in labels]  # not str.format: no format injection
    label_vecs, label_tokens = await label_embeddings(handle, prompts, settings)
    embedded = await embed_parsed(handle, parsed, services)
    sims = embedded.vectors @ label_vecs.T  # (n, m) cosine similarities
    probs = softmax(sims / max(handle.temperature, 1e-6))
    data = [{"index": i, "labels": ranked(sims[i], probs[i], labels, body.top_k)} for i in range(len(parsed))]
    return {
        "object": "list",
        "model": handle.reference,
        "method": "zero-shot",
        "head": None,
        "template": template,
        "data": data,
        "usage": usage(embedded.tokens + label_tokens, embedded.truncated),
    }


async def with_head(
    handle: ModelHandle,
    parsed: list[Parsed],
    body: ClassifyRequest,
    services: Services,
) -> dict[str, object]:
    assert body.head is not None
    settings, fetcher = services.settings, services.fetcher
    spec = handle.heads.get(body.head)
    if spec is None:
        raise APIError(
            404,
            f"model {handle.reference} has no head {body.head!r} (heads: {sorted(handle.heads)})",
            "head_not_found",
            param="head",
        )
    if body.labels is not None:
        raise bad_request("send either 'labels' (zero-shot) or 'head', not both", "invalid_request", "labels")
    wanted = spec.input
    for i, p in enumerate(parsed):
        if p.modality != wanted:
            raise bad_request(
                f"head {body.head!r} reads {wanted} inputs (pairs are {{'image': ..., 'text': ...}}), "
                f"but input {i} is {'a' if p.modality != 'image' else 'an'} {p.modality}",
                "modality_conflict",
                "input",
            )
    names = [f"input[{i}]" for i in range(len(parsed))]
    tokens, truncated = 0, 0
    texts = [p.text or "" for p in parsed] if wanted in ("text", "pair") else []
    images = [p.image or "" for p in parsed] if wanted in ("image", "pair") else []
    op = f"head:{body.head}"
    logits: Any
    if wanted == "text":
        check_texts(texts, settings, names[: len(texts)])
        outputs = await handle.run_texts(op, texts, names[: len(texts)])
        logits, tokens, truncated = outputs.outputs, outputs.total_tokens, len(outputs.truncated)
    else:
        prep = await tokenize(handle, texts, settings, names[: len(texts)])
        pixels = (await load_images(handle, images, settings, fetcher, names[: len(images)])).pixels
        if wanted == "image":
            logits = await handle.run("image", op, pixels)
        else:
            payloads = [PairPayload(px, ids) for px, ids in zip(pixels, prep.rows, strict=True)]
            logits = await handle.run("pair", op, payloads)
        tokens = len(pixels) * image_tokens(handle) + prep.total_tokens
        truncated = len(prep.truncated)
    labels = list(spec.labels)
    data = []
    for i, row in enumerate(logits):
        row = np.asarray(row, dtype=np.float64)
        probs = softmax(row)
        data.append({"index": i, "labels": ranked(row, probs, labels, body.top_k)})
    return {
        "object": "list",
        "model": handle.reference,
        "method": "head",
        "head": body.head,
        "template": None,
        "data": data,
        "usage": usage(tokens, truncated),
    }


@router.post(
    "/v1/classify", response_model=ClassifyResponse, summary="Zero-shot or fine-tuned-head classification"
)
async def classify(body: ClassifyRequest, inference: InferenceDep) -> dict[str, object]:
    handle, services = inference.model, inference.services
    check_model(handle, body.model)
    settings = services.settings
    parsed = parse_inputs(body.input, body.modality, settings, allow_pair=body.head is not None)
    if body.top_k is not None and body.top_k > settings.max_top_k:
        raise bad_request(f"top_k is at most {settings.max_top_k}", "invalid_top_k", "top_k")
    if body.head is not None:
        return await with_head(handle, parsed, body, services)
    return await zero_shot(handle, parsed, body, services)

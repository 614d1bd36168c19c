"""POST /v1/embeddings — OpenAI-compatible, plus images."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter
from fastapi.responses import Response

from service.deps import InferenceDep, Services
from service.errors import bad_request
from service.inputs import Images, Parsed, check_model, check_texts, image_tokens, load_images, parse_inputs
from service.model_handle import ModelHandle
from service.responses import encode_json
from service.schemas import EmbeddingRequest, EmbeddingResponse

router = APIRouter(tags=["embeddings"])


@dataclass
class Embedded:
    vectors: np.ndarray  # (n, E) unit vectors, in input order
    tokens: int  # for `usage`
    truncated: int  # texts cut to the model's limit
    thumbnails: list[str | None]  # per input: a data URI for images that asked for one (Parsed.thumbnail)


async def embed_parsed(
    handle: ModelHandle,
    parsed: list[Parsed],
    services: Services,
    param: str = "input",
) -> Embedded:
    """Embed texts and images (in the joint space) in input order."""
    settings, fetcher, metrics = services.settings, services.fetcher, services.metrics
    many = len(parsed) > 1
    names = [f"{param}[{i}]" if many else param for i in range(len(parsed))]
    text_idx = [i for i, p in enumerate(parsed) if p.modality == "text"]
    image_idx = [i for i, p in enumerate(parsed) if p.modality == "image"]
    texts = [parsed[i].text or "" for i in text_idx]
    text_names = [names[i] for i in text_idx]
    check_texts(texts, settings, text_names)
    if not image_idx:  # the hot path: texts only (tokenised in the text queue)
        text_out = await handle.embed_texts(texts, text_names)
        images = Images([], [])
        image_vecs = None
    else:
        images = await load_images(
            handle,
            [parsed[i].image or "" for i in image_idx],
            settings,
            fetcher,
            [names[i] for i in image_idx],
            thumbnails=[parsed[i].thumbnail for i in image_idx],
        )
        text_out, image_vecs = await asyncio.gather(
            handle.embed_texts(texts, text_names), handle.embed_images(images.pixels)
        )
    if not image_idx:
        out = text_out.vectors
    else:
        out = np.empty((len(parsed), handle.dim), dtype=np.float32)
        if text_idx:
            out[text_idx] = text_out.vectors
        out[image_idx] = image_vecs
    if text_idx:
        metrics.text_inputs.inc(len(text_idx))
        metrics.tokens.inc(text_out.total_tokens)
        if text_out.truncated:
            metrics.truncated.inc(len(text_out.truncated))
    if image_idx:
        metrics.image_inputs.inc(len(image_idx))
    tokens = text_out.total_tokens + len(image_idx) * image_tokens(handle)
    thumbnails: list[str | None] = [None] * len(parsed)
    for i, thumbnail in zip(image_idx, images.thumbnails, strict=True):
        thumbnails[i] = thumbnail
    return Embedded(out, tokens, len(text_out.truncated), thumbnails)


def usage(tokens: int, truncated: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens, "truncated_inputs": truncated}


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    summary="Embed texts and images into the joint space (OpenAI-compatible)",
)
async def create_embeddings(body: EmbeddingRequest, inference: InferenceDep) -> Response:
    # The hot path solves one dependency (the pinned model and the services together): each costs
    # ~10 µs of event-loop CPU per request in FastAPI's solver (measured; two were ~6 % of this route's).
    handle, services = inference.model, inference.services
    check_model(handle, body.model)
    if body.dimensions is not None and body.dimensions != handle.dim:
        raise bad_request(
            f"dimensions={body.dimensions} is not supported: {handle.reference} produces "
            f"{handle.dim}-dimensional embeddings (omit 'dimensions' or send that value)",
            "unsupported_dimensions",
            "dimensions",
        )
    parsed = parse_inputs(body.input, body.modality, services.settings)
    embedded = await embed_parsed(handle, parsed, services)
    vectors = np.ascontiguousarray(embedded.vectors, dtype=np.float32)
    embeddings: Sequence[object]
    if body.encoding_format == "base64":
        little = vectors.astype("<f4", copy=False)
        embeddings = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    else:
        embeddings = list(vectors)  # rows go to orjson as numpy arrays (no .tolist())
    content = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)],
        "model": handle.reference,
        "usage": usage(embedded.tokens, embedded.truncated),
    }
    # Returned directly (not through response_model validation): the hot path stays cheap.
    return Response(encode_json(content), media_type="application/json")

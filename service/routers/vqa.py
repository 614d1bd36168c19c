"""POST /v1/vqa — an image and a question -> ranked answers from the model's "vqa" head."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import InferenceDep
from service.errors import bad_request
from service.inputs import check_model, image_tokens, load_images, tokenize
from service.model_handle import PairPayload
from service.routers.embeddings import usage
from service.schemas import VQARequest, VQAResponse

router = APIRouter(tags=["vqa"])


@router.post("/v1/vqa", response_model=VQAResponse, summary="Answer a question about an image")
async def answer(body: VQARequest, inference: InferenceDep) -> dict[str, object]:
    handle, settings, fetcher = inference.model, inference.services.settings, inference.services.fetcher
    check_model(handle, body.model)
    if "vqa" not in handle.heads:
        raise bad_request(
            f"model {handle.reference} has no 'vqa' head (heads: {sorted(handle.heads) or 'none'}); "
            "activate a version fine-tuned for VQA",
            "vqa_unavailable",
        )
    if not body.question.strip():
        raise bad_request("question is empty", "invalid_question", "question")
    top_k = min(body.top_k, settings.max_top_k, len(handle.heads["vqa"].labels))
    prep = await tokenize(handle, [body.question], settings, ["question"])
    (pixels,) = (await load_images(handle, [body.image], settings, fetcher, ["image"])).pixels
    (answers,) = await handle.run("pair", "vqa", [PairPayload(pixels, prep.rows[0], top_k)])
    tokens = prep.total_tokens + image_tokens(handle)
    return {
        "object": "vqa.answers",
        "model": handle.reference,
        "answers": [{"answer": a, "score": float(p)} for a, p in answers],
        "usage": usage(tokens, len(prep.truncated)),
    }

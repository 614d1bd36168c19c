"""Turning request inputs into model inputs: modality inference, tokenising, image decoding.

Texts for the text queue are only checked here (length in characters) and tokenised in the queue's
pre stage (service/batching.py), in one batch call with the other requests' texts; `tokenize` serves
the pair queue (VQA, pair heads). Images are decoded and preprocessed in a thread (Pillow releases
the GIL), with the hardened decoder of `momo.preprocess` and this server's limits. Every caller
mistake becomes an `APIError` (4xx) naming the offending input.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from momo.preprocess import (
    ImageDecodeError,
    ImageLimits,
    decode_base64_image,
    decode_image,
    preprocess_images,
)
from service.errors import APIError, bad_request
from service.model_handle import ModelHandle
from service.schemas import Item
from service.settings import Settings
from service.urls import ImageFetcher
from service.validation import model_reference

Modality = Literal["text", "image"]
SIZE_CODES = ("image_too_large_bytes", "image_too_many_pixels")
THUMBNAIL_SIDE = 128  # longest side of a collection item's thumbnail, in pixels
THUMBNAIL_QUALITY = 75  # WebP: a few KB at 128 px
MODEL_ALIASES = ("", "momo", "default", "active")


@dataclass
class Parsed:
    """One input: a text, an image source (base64 / data URI / URL), or both (a pair)."""

    text: str | None = None
    image: str | None = None
    thumbnail: bool = False  # images: also make a thumbnail (collection items)

    @property
    def modality(self) -> str:
        if self.text is not None and self.image is not None:
            return "pair"
        return "image" if self.image is not None else "text"


def check_model(handle: ModelHandle, requested: str | None) -> None:
    """A request's `model` must name the served model (or be a generic alias)."""
    if requested is None or requested.strip().lower() in MODEL_ALIASES:
        return
    model_reference(requested, "model")
    if requested in (handle.name, handle.reference):
        return
    raise APIError(
        404,
        f"model {requested!r} is not served here; this server serves {handle.reference!r} "
        "(use that, 'momo', or activate another version with POST /v1/models/{id}/activate)",
        "model_not_found",
        param="model",
    )


def is_image_string(value: str) -> bool:
    return value[:11].lower() == "data:image/"


def parse_one(value: Any, modality: Modality | None, param: str, *, allow_pair: bool) -> Parsed:
    if isinstance(value, str):
        if modality == "image":
            return Parsed(image=value)
        if modality is None and is_image_string(value):
            return Parsed(image=value)
        return Parsed(text=value)
    if isinstance(value, Item):
        if value.image is not None and value.text is not None:
            if not allow_pair:
                raise bad_request(
                    f"{param} has both 'image' and 'text'; send one per input", "invalid_input", param
                )
            return Parsed(text=value.text, image=value.image)
        if value.image is not None:
            if modality == "text":
                raise bad_request(f"{param} is an image but modality is 'text'", "modality_conflict", param)
            return Parsed(image=value.image)
        if modality == "image":
            raise bad_request(f"{param} is a text but modality is 'image'", "modality_conflict", param)
        return Parsed(text=value.text)
    if isinstance(value, int | list):
        raise bad_request(
            "token arrays are not supported: send text as strings (MoMo uses its own tokenizer)",
            "token_input_unsupported",
            param,
        )
    raise APIError(
        422, f"{param} must be a string or an object with 'image' or 'text'", "invalid_type", param=param
    )


def parse_inputs(
    raw: Any, modality: Modality | None, settings: Settings, *, param: str = "input", allow_pair: bool = False
) -> list[Parsed]:
    if isinstance(raw, str | Item):
        values: list[Any] = [raw]
        names = [param]
    elif isinstance(raw, list):
        if raw and all(isinstance(v, int) for v in raw):
            raise bad_request(
                "token arrays are not supported: send text as strings (MoMo uses its own tokenizer)",
                "token_input_unsupported",
                param,
            )
        values = raw
        names = [f"{param}[{i}]" for i in range(len(raw))]
    else:
        raise APIError(422, f"{param} must be a string or a list", "invalid_type", param=param)
    if not values:
        raise bad_request(f"{param} must not be empty", "empty_input", param)
    if len(values) > settings.max_items_per_request:
        raise bad_request(
            f"{len(values)} inputs in one request; the limit is {settings.max_items_per_request}",
            "too_many_inputs",
            param,
        )
    return [parse_one(v, modality, n, allow_pair=allow_pair) for v, n in zip(values, names, strict=True)]


# --- texts -----------------------------------------------------------------------------------------------
@dataclass
class TextPrep:
    rows: list[np.ndarray]  # real token ids per text (no padding)
    num_tokens: list[int]
    truncated: list[int]  # indexes (into the texts given) that were truncated

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)


def _tokenize(handle: ModelHandle, texts: Sequence[str]) -> TextPrep:
    batch = handle.tokenizer.encode_batch(list(texts), max_length=handle.config.max_text_len)
    rows = [batch.input_ids[i, :n].copy() for i, n in enumerate(batch.num_tokens)]
    truncated = [i for i, t in enumerate(batch.truncated) if t]
    return TextPrep(rows, list(batch.num_tokens), truncated)


def check_texts(texts: Sequence[str], settings: Settings, params: Sequence[str]) -> None:
    """The per-text character limit (before any tokenising)."""
    limit = settings.max_text_chars
    for text, param in zip(texts, params, strict=True):
        if len(text) > limit:
            raise bad_request(
                f"{param} has {len(text)} characters; the limit is {limit}", "text_too_long", param
            )


async def tokenize(
    handle: ModelHandle, texts: Sequence[str], settings: Settings, params: Sequence[str]
) -> TextPrep:
    if not texts:
        return TextPrep([], [], [])
    check_texts(texts, settings, params)
    if sum(len(t) for t in texts) > 4096:
        prep = await asyncio.to_thread(_tokenize, handle, texts)
    else:
        prep = _tokenize(handle, texts)
    if prep.truncated and settings.text_overflow == "error":
        names = ", ".join(params[i] for i in prep.truncated[:5])
        raise bad_request(
            f"{names} exceed(s) the model's limit of {handle.config.max_text_len} tokens "
            "(this server refuses over-long texts instead of truncating them)",
            "text_too_long",
            params[prep.truncated[0]],
        )
    return prep


# --- images ----------------------------------------------------------------------------------------------
def image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)


def image_error(exc: ImageDecodeError, param: str) -> APIError:
    status = 413 if exc.code in SIZE_CODES else 400
    return APIError(status, f"{param}: {exc.message}", exc.code, param=param)


def make_thumbnail(image: Image.Image) -> str:
    """A `data:image/webp;base64,...` URI of `image` scaled to at most THUMBNAIL_SIDE px a side."""
    small = image.copy()
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, "WEBP", quality=THUMBNAIL_QUALITY, method=4)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Images:
    pixels: list[np.ndarray]  # (C, H, W) per image, preprocessed for the model
    thumbnails: list[str | None]  # a data URI where one was asked for


def _decode_all(
    sources: Sequence[str | bytes],
    params: Sequence[str],
    limits: ImageLimits,
    handle: ModelHandle,
    thumbnails: Sequence[bool],
) -> Images:
    images = []
    for source, param in zip(sources, params, strict=True):
        try:
            if isinstance(source, bytes):
                images.append(decode_image(source, limits))
            else:
                images.append(decode_base64_image(source, limits))
        except ImageDecodeError as exc:
            raise image_error(exc, param) from exc
    small = [make_thumbnail(img) if want else None for img, want in zip(images, thumbnails, strict=True)]
    return Images(list(preprocess_images(images, handle.config)), small)


async def load_images(
    handle: ModelHandle,
    sources: Sequence[str],
    settings: Settings,
    fetcher: ImageFetcher,
    params: Sequence[str],
    thumbnails: Sequence[bool] | None = None,
) -> Images:
    """Decode and preprocess images (base64, data: URIs, or URLs when enabled), and make the
    thumbnails asked for (`thumbnails[i]`) from the same decoded images."""
    if not sources:
        return Images([], [])
    resolved: list[str | bytes] = []
    for source, param in zip(sources, params, strict=True):
        if not isinstance(source, str):
            raise APIError(422, f"{param} must be a string", "invalid_type", param=param)
        if fetcher.is_url(source.lstrip()):
            resolved.append(await fetcher.fetch(source.strip(), param))
        else:
            resolved.append(source)
    wanted = list(thumbnails) if thumbnails is not None else [False] * len(sources)
    return await asyncio.to_thread(_decode_all, resolved, params, image_limits(settings), handle, wanted)


def image_tokens(handle: ModelHandle) -> int:
    """What one image counts in `usage`: its patches plus the image CLS."""
    return int(handle.config.num_patches) + 1

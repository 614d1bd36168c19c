"""The one place where the service encodes JSON it sends: routes, error handlers and middlewares.

Request bodies with invalid Unicode are refused at the edge (`service.validation`), but text that is
already stored — written by an older version, another writer, or straight through the store — may
hold lone surrogates, which UTF-8 cannot encode. A response must not fail on them (one bad item
would take down every listing that shows it): each one is sent as U+FFFD, the replacement
character, the way a UTF-8 decoder shows bytes it cannot read.

Encoding is orjson's (several times faster than the stdlib's, and numpy-aware: an embedding matrix
goes out without a `.tolist()`; float32 values are written with the shortest repr that reads back
as the same float32). Content orjson refuses (a lone surrogate, an int beyond 64 bits) takes the
stdlib path with the replacement above.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
from fastapi.responses import JSONResponse as _StarletteJSONResponse

from service.unicode import LONE_SURROGATE

ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):  # a numpy scalar of a kind orjson does not take natively
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_json(content: Any) -> bytes:
    """Compact UTF-8 JSON (numpy arrays and scalars included); a lone surrogate anywhere in
    `content` becomes U+FFFD."""
    try:
        return orjson.dumps(content, default=_default, option=ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        pass
    text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_plain)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class JSONResponse(_StarletteJSONResponse):
    """The app's default response class: Starlette's, rendered with `encode_json`. (FastAPI's own fast
    path, pydantic's `dump_json`, raises on a lone surrogate; a default class of our own opts out.)"""

    def render(self, content: Any) -> bytes:
        return encode_json(content)

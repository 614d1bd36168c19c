"""The one place where the service encodes JSON it sends: routes, error handlers and middlewares.

Request bodies with invalid Unicode are refused at the edge (`service.validation`), but text that is
already stored — written by an older version, another writer, or straight through the store — may
hold lone surrogates, which UTF-8 cannot encode. A response must not fail on them (one bad item
would take down every listing that shows it): each one is sent as U+FFFD, the replacement
character, the way a UTF-8 decoder shows bytes it cannot read.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse as _StarletteJSONResponse

from service.unicode import LONE_SURROGATE


def encode_json(content: Any) -> bytes:
    """Compact UTF-8 JSON; a lone surrogate anywhere in `content` becomes U+FFFD."""
    text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


class JSONResponse(_StarletteJSONResponse):
    """The app's default response class: Starlette's, rendered with `encode_json`. (FastAPI's own fast
    path, pydantic's `dump_json`, raises on a lone surrogate; a default class of our own opts out.)"""

    def render(self, content: Any) -> bytes:
        return encode_json(content)

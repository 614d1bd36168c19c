"""Lone surrogates, in one place: UTF-16 halves (U+D800-U+DFFF) that JSON can carry as escapes but
UTF-8 cannot encode. The edge refuses them in requests (`service.validation`); responses
(`service.responses`) and old stored data (`service.collections.legacy`) replace them by U+FFFD,
the way a UTF-8 decoder shows bytes it cannot read."""

from __future__ import annotations

import re
from typing import Any

LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_lone_surrogates(value: Any) -> Any:
    """`value` (parsed JSON) with each lone surrogate in its strings and keys replaced by U+FFFD: for
    text that was stored before the edge refused it (the old collections format) and is read again."""
    if isinstance(value, str):
        return LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [replace_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {replace_lone_surrogates(k): replace_lone_surrogates(v) for k, v in value.items()}
    return value

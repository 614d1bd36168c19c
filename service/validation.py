"""Checks at the edge that pydantic's field types do not express, each a 400 that names the field.

- **Text must be valid Unicode.** JSON can carry lone surrogates (`"\\ud800"`, or their CESU-8
  bytes, which Python's JSON decoder lets through): they crash the tokenizer and cannot be encoded
  back to UTF-8. Every request body derives from `RequestModel`, which walks the whole body once,
  before any field is validated — strings, list items, dict keys and values at any depth — so no
  endpoint can forget a field and nothing invalid is ever stored. Bodies are the only way in:
  uvicorn and Starlette decode paths and query strings with replacement characters, and multipart
  fields strictly (falling back to Latin-1).
- **Model references follow the store's grammar** (`momo.store.parse_reference`): `..`, `.`, slashes
  and NUL are refused with 400 `invalid_model_reference` wherever a model is named.

Both raise `APIError` from inside validation: pydantic lets any exception other than ValueError and
AssertionError through unchanged, and the app's handler renders it (a 400, not a 422).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator

from momo.store import InvalidReference, check_name, parse_reference
from service.errors import APIError
from service.unicode import LONE_SURROGATE


def _bad(text: str) -> bool:
    return not text.isascii() and LONE_SURROGATE.search(text) is not None


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def invalid_unicode(value: Any, path: str = "") -> APIError | None:
    """The error for the first lone surrogate in a parsed JSON value (depth-first, in order), if any."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            if _bad(node):
                return _unicode_error(where or "body", f"{where or 'the body'} is not valid Unicode")
        elif isinstance(node, dict):
            children = []
            for key, child in node.items():
                if isinstance(key, str) and _bad(key):
                    name = where or "body"
                    return _unicode_error(name, f"a key of {where or 'the body'} is not valid Unicode")
                children.append((_join(where, str(key)), child))
            stack.extend(reversed(children))
        elif isinstance(node, list):
            stack.extend(reversed([(_join(where, i), child) for i, child in enumerate(node)]))
    return None


def _unicode_error(param: str, message: str) -> APIError:
    return APIError(
        400, f"{message}: it holds a lone surrogate (U+D800-U+DFFF)", "invalid_unicode", param=param
    )


class RequestModel(BaseModel):
    """The base of every request body (the models FastAPI reads a body into; the models nested in
    them are checked with them). Invalid Unicode anywhere in the body: 400 `invalid_unicode`."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        error = invalid_unicode(data)
        if error is not None:
            raise error
        return data


def model_reference(value: str, param: str, *, name_only: bool = False) -> str:
    """`value` if it is a model reference (`name` or `name:version`; only a name with `name_only`),
    else 400 `invalid_model_reference` naming `param`."""
    try:
        if name_only:
            check_name(value)
        else:
            parse_reference(value)
    except InvalidReference as exc:
        raise APIError(400, str(exc), "invalid_model_reference", param=param) from None
    return value


__all__ = ["RequestModel", "invalid_unicode", "model_reference"]

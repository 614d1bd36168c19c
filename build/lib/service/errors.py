"""One error shape for every failure: `{"error": {"message", "type", "code"}}` (OpenAI style).

Caller mistakes are 4xx (400 bad value, 401 no/wrong key, 404 unknown thing, 409 state conflict,
413 too large, 422 malformed JSON / wrong types, 429 queue full); 503 when the service cannot
serve right now (no model, dead worker, timeout). A 500 means a bug, never bad input.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("momo.service")

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "service_unavailable",
}


class APIError(Exception):
    """Raise anywhere in the service; rendered in the one error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        type: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type or ERROR_TYPES.get(
            status, "invalid_request_error" if status < 500 else "server_error"
        )
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code}
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(
        exc.body(), status_code=exc.status, headers=dict(exc.headers) if exc.headers else None
    )


def error_body(status: int, message: str, code: str) -> dict[str, Any]:
    return APIError(status, message, code).body()


def bad_request(message: str, code: str = "invalid_value", param: str | None = None) -> APIError:
    return APIError(400, message, code, param=param)


def not_found(message: str, code: str = "not_found") -> APIError:
    return APIError(404, message, code)


def conflict(message: str, code: str = "conflict") -> APIError:
    return APIError(409, message, code)


def too_large(message: str, code: str = "payload_too_large", param: str | None = None) -> APIError:
    return APIError(413, message, code, param=param)


def unavailable(message: str, code: str = "unavailable", retry_after: int | None = None) -> APIError:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return APIError(503, message, code, headers=headers)


def _is_tag(part: object) -> bool:
    """Union-branch tags pydantic puts into error locations ("str", "list[int]", "function-after[...]")."""
    return isinstance(part, str) and ("[" in part or part in _TAGS)


_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "Item", "json-or-python", "is-instance"}


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p != "body" and not _is_tag(p)]
    return ".".join(parts) or "body"


def _validation_message(exc: RequestValidationError) -> tuple[str, str, str | None]:
    errors = list(exc.errors())
    if not errors:
        return "request is invalid", "invalid_request", None
    first = errors[0]
    if str(first.get("type", "")) in ("json_invalid", "json_type"):
        ctx = first.get("ctx")
        detail = ctx.get("error") if isinstance(ctx, dict) else None
        return f"request body is not valid JSON{f' ({detail})' if detail else ''}", "invalid_json", None
    grouped: dict[str, list[str]] = {}
    for error in errors:
        messages = grouped.setdefault(_location(error.get("loc", ())), [])
        message = str(error.get("msg", "invalid"))
        if message not in messages:
            messages.append(message)
    parts = [f"{where}: {' or '.join(msgs[:3])}" for where, msgs in list(grouped.items())[:5]]
    more = f" (and {len(grouped) - 5} more)" if len(grouped) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more, "invalid_type", next(iter(grouped))


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, code, param = _validation_message(exc)
    return error_response(APIError(422, message, code, param=param))


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "payload_too_large"}
    message = str(exc.detail) if exc.detail else "error"
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    return error_response(
        APIError(
            exc.status_code,
            message,
            codes.get(exc.status_code, "http_error"),
            headers=dict(exc.headers) if exc.headers else None,
        )
    )


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(APIError(500, "internal server error", "internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(Exception, _unhandled_handler)

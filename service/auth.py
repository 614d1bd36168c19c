"""API keys, checked in pure ASGI middleware from the request head alone.

`Authorization: Bearer <key>` must carry one of the configured keys on every path except the public
ones (liveness, readiness, the docs, the playground's static files and, with `metrics_auth` off,
/metrics): deny by default, so a new router is protected without a line of its own. A public entry
ending in "/" covers every path under it (the playground's assets under /ui/).

The check runs before the app — and every middleware inside this one — reads a body byte, so a
request without a valid key costs nothing: no JSON parsed (malformed JSON gets 401, not 422),
nothing buffered or spooled to disk. The rest of the body is never read here; uvicorn discards what
arrives, and the connection stays usable.

Keys are compared as bytes with `hmac.compare_digest` (constant time for each key) and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_body
from service.middleware import send_json

CHALLENGE = (b"www-authenticate", b"Bearer")


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: Iterable[SecretStr], public_paths: Iterable[str]) -> None:
        self.app = app
        self._keys = [key.get_secret_value().encode("utf-8") for key in keys]
        self.public_paths = frozenset(p for p in public_paths if not p.endswith("/"))
        self.public_prefixes = tuple(p for p in public_paths if p.endswith("/"))

    def _public(self, path: str) -> bool:
        return path in self.public_paths or path.startswith(self.public_prefixes)

    def _authorized(self, scope: Scope) -> tuple[bool, str]:
        """(allowed, error code) from the Authorization header."""
        header = next((value for name, value in scope.get("headers", []) if name == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        if not token or scheme.lower() != b"bearer":
            return False, "missing_api_key"
        # every key is compared (no early exit), so the time taken does not tell which one is close
        matches = [hmac.compare_digest(token, key) for key in self._keys]
        return any(matches), "invalid_api_key"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._public(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        allowed, code = self._authorized(scope)
        if allowed:
            await self.app(scope, receive, send)
            return
        message = (
            "missing API key: send 'Authorization: Bearer <key>'"
            if code == "missing_api_key"
            else "invalid API key"
        )
        await send_json(send, 401, error_body(401, message, code), [CHALLENGE])


def declare_bearer_auth(app: FastAPI, public_paths: Iterable[str]) -> None:
    """Declare the Bearer scheme in the OpenAPI document on every operation that needs a key, so
    /docs can send one."""
    public = frozenset(public_paths)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from MOMO_API_KEYS.",
                }
            }
            for path, operations in schema.get("paths", {}).items():
                if path not in public:
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

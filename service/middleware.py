"""Pure ASGI middlewares: request context (id, log line, metrics) and the request body limit."""

from __future__ import annotations

import itertools
import logging
import random
import re
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deps import release_pinned
from service.errors import error_body
from service.logs import request_id_var
from service.metrics import Metrics
from service.responses import encode_json

access_log = logging.getLogger("momo.service.access")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    payload = encode_json(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload, "more_body": False})


class RequestIds:
    """Cheap unique request ids: a random per-process prefix and a counter (32 hex characters, like a
    uuid4's hex, at a fraction of its cost per request)."""

    def __init__(self) -> None:
        self._prefix = f"{secrets.randbits(64):016x}"
        self._counter = itertools.count(secrets.randbits(32))

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFFFFFF:016x}"


class RequestContextMiddleware:
    """X-Request-ID in/out, Prometheus counts and the access log line per request (every error; of
    the other requests the fraction `access_log_sample`, none with `access_log` off); a last-resort
    error-shape 500 (with the request id) for an exception nothing else handled; and the release of
    the model a request pinned (service/deps.py)."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, access_log_enabled: bool = True, access_log_sample: float = 1.0
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_enabled = access_log_enabled
        self.sample = access_log_sample
        self.ids = RequestIds()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _observe(self, template: str, method: str, status: int, elapsed: float) -> None:
        key = (template, method, status)
        children = self._children.get(key)
        if children is None:
            if len(self._children) > 4096:  # bounded: routes x methods x statuses
                self._children.clear()
            children = (
                self.metrics.requests.labels(template, method, str(status)),
                self.metrics.latency.labels(template, method),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(elapsed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _REQUEST_ID_RE.match(incoming) else self.ids.next()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        rid_header = (b"x-request-id", request_id.encode("latin-1"))
        status = 500
        started = False
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        in_flight = self.metrics.in_flight
        in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            access_log.exception("unhandled error")
            status = 500
            if not started:
                await send_json(
                    send, 500, error_body(500, "internal server error", "internal_error"), [rid_header]
                )
        finally:
            release_pinned(scope)
            in_flight.dec()
            elapsed = time.perf_counter() - t0
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self._observe(template, method, int(status), elapsed)
            if self.log_enabled and (status >= 400 or self.sample >= 1.0 or random.random() < self.sample):
                client = scope.get("client")
                access_log.info(
                    "request",
                    extra={
                        "method": method,
                        "path": scope.get("path"),
                        "route": template,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "client": client[0] if client else None,
                    },
                )
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` with 413 — from Content-Length when declared, and by counting
    the bytes as they stream in otherwise (chunked). A body within its declared Content-Length
    goes to the app untouched (the HTTP server never delivers more than the declared length), so the
    hot path pays nothing here; a counted body is read here, bounded, and replayed, so the app never
    sees a partial oversized body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _refuse(self, declared: int | None = None) -> dict[str, Any]:
        size = f" ({declared} bytes)" if declared is not None else ""
        return error_body(
            413, f"request body{size} is larger than the limit of {self.max_bytes} bytes", "request_too_large"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_json(
                        send, 400, error_body(400, "invalid Content-Length", "invalid_request"), []
                    )
                    return
                if declared > self.max_bytes:
                    await send_json(send, 413, self._refuse(declared), [(b"connection", b"close")])
                    return
                await self.app(scope, receive, send)  # bounded by its declared length
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await send_json(send, 413, self._refuse(), [(b"connection", b"close")])
                return
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

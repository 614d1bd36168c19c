"""The request-body limit with a separate, streaming limit for dataset uploads.

`service.middleware.BodyLimitMiddleware` buffers a body (up to `max_body_bytes`, 32 MiB by default)
before the app sees it — right for inference requests, wrong for a dataset upload of hundreds of MB.
This subclass lets upload routes through unbuffered (the multipart parser spools them to disk) and
counts their bytes as they stream: over `upload_max_bytes` (declared or counted) -> 413 in the
service's error shape. Every other route keeps the parent's behaviour.
"""

from __future__ import annotations

import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body
from service.middleware import BodyLimitMiddleware, send_json

DRAIN_BYTES = 8 * 1024 * 1024  # read at most this much of a refused upload before answering


class UploadBodyLimitMiddleware(BodyLimitMiddleware):
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        upload_max_bytes: int,
        upload_paths: tuple[str, ...] = ("/v1/files",),
    ) -> None:
        super().__init__(app, max_bytes)
        self.upload_max_bytes = upload_max_bytes
        self.upload_paths = upload_paths

    def _refuse_upload(self, declared: int | None = None) -> dict[str, object]:
        size = f" ({declared} bytes)" if declared is not None else ""
        return error_body(
            413, f"upload{size} is larger than the limit of {self.upload_max_bytes} bytes", "file_too_large"
        )

    @staticmethod
    async def _drain(receive: Receive, cap: int) -> None:
        """Read (and drop) what is left of the body, up to `cap` bytes, so the client reads our 413
        instead of a connection reset; a body larger than that is cut off by closing."""
        seen = 0
        while seen <= cap:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.upload_paths:
            await super().__call__(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.upload_max_bytes:
                if int(value) <= self.upload_max_bytes + DRAIN_BYTES:
                    await self._drain(receive, DRAIN_BYTES + self.upload_max_bytes)
                await send_json(send, 413, self._refuse_upload(int(value)), [(b"connection", b"close")])
                return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.upload_max_bytes:
                    exceeded = True
                    return {"type": "http.disconnect"}  # the app stops reading; we answer 413
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            with contextlib.suppress(Exception):
                await self._drain(receive, DRAIN_BYTES)
                await send_json(send, 413, self._refuse_upload(), [(b"connection", b"close")])

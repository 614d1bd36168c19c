"""The web playground at /ui: static files from `service/ui/` (no build step), on unless `ui_enabled`
is false. The page calls only the public HTTP API, with the key the user types (sent as
`Authorization: Bearer`), so the files themselves are served without authentication.

    GET /ui             -> 307 to /ui/ (relative asset URLs resolve under it)
    GET /ui/            -> index.html
    GET /ui/<asset>     -> the ES modules, the style sheet, the icon
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

# The page loads nothing from elsewhere (it must work offline): scripts, styles and fetches come from
# this origin only; images may also be data: URIs (thumbnails, previews of chosen files) or blob: URLs.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # revalidate on every load (ETag / Last-Modified): an upgraded server never runs a stale page
    "Cache-Control": "no-cache",
}


class PlaygroundFiles(StaticFiles):
    """Starlette's StaticFiles with the page's security and caching headers on every response."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(HEADERS)
        return response


def mount(app: FastAPI) -> None:
    """Serve the playground under /ui (a mount, so it stays out of the OpenAPI document)."""
    app.mount("/ui", PlaygroundFiles(directory=UI_DIR, html=True), name="ui")

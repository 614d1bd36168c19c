"""The playground's static files at /ui (service/routers/ui.py): served without a key, with headers
that keep the page to this origin, every asset the page loads present, nothing loaded from
elsewhere, and off with `ui_enabled=false`. The page itself is tested in a browser (tests/service/ui)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from service.routers.ui import UI_DIR
from tests.service.helpers import LiveServer, assert_error, make_settings

JS_TYPES = {"text/javascript", "application/javascript"}


def _assets(html: str) -> set[str]:
    """Every file the page loads: index.html's src/href, then the ES modules' imports, transitively."""
    found = {m for m in re.findall(r'(?:src|href)="([^"#:]+)"', html) if not m.startswith("..")}
    pending = [name for name in found if name.endswith(".js")]
    while pending:
        for imported in re.findall(r'from "\./([^"]+)"', (UI_DIR / pending.pop()).read_text()):
            if imported not in found:
                found.add(imported)
                pending.append(imported)
    return found


def test_the_page_and_its_assets_are_served_without_a_key(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        redirect = anonymous.get("/ui")
        assert redirect.status_code == 307 and redirect.headers["location"].endswith("/ui/")
        page = anonymous.get("/ui/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-cache"
        assets = _assets(page.text)
        assert {"app.js", "api.js", "style.css", "icon.svg", "finetune.js"} <= assets
        for name in assets:
            response = anonymous.get(f"/ui/{name}")
            assert response.status_code == 200, name
            kind = response.headers["content-type"].split(";")[0]
            expected = {"js": JS_TYPES, "css": {"text/css"}, "svg": {"image/svg+xml"}}[name.rsplit(".", 1)[1]]
            assert kind in expected, (name, kind)
            assert response.headers["content-security-policy"] == csp
        # revalidation instead of a stale copy after an upgrade
        etag = page.headers["etag"]
        assert anonymous.get("/ui/", headers={"If-None-Match": etag}).status_code == 304
        assert_error(anonymous.get("/ui/missing.js"), 404)
        assert_error(anonymous.post("/ui/"), 405)
    with server.client() as client:
        assert not [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/ui")]


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """Offline by construction: no absolute URL in any file, every module import relative."""
    for path in sorted(UI_DIR.iterdir()):
        text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, not a fetch
        assert not re.search(r"https?://|(?:src|href)=\"//|url\(", text), path.name
        if path.suffix == ".js":
            specifiers = re.findall(r'^import .* from "([^"]+)";', text, flags=re.M)
            assert all(s.startswith("./") for s in specifiers), (path.name, specifiers)


def test_ui_enabled_false_serves_no_page(model_store: Path, tmp_path: Path) -> None:
    settings = make_settings(model_store, tmp_path, ui_enabled=False)
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=30) as anonymous:
        # no longer a public path: deny by default, and with a key there is nothing there
        assert_error(anonymous.get("/ui/"), 401, "missing_api_key")
        with live.client() as client:
            assert_error(client.get("/ui/"), 404)
            assert_error(client.get("/ui/app.js"), 404)
        assert anonymous.get("/health").status_code == 200

"""One way to reach the services (service/deps.py): only deps.py reads `app.state` (app.py fills it),
and every route solves at most one dependency, one of deps.py's aliases."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from service import deps
from service.app import create_app
from tests.service.helpers import make_settings

SERVICE = Path(deps.__file__).resolve().parent
ALLOWED = {SERVICE / "deps.py", SERVICE / "app.py"}  # the reader, and the factory that builds the state


def _is_app(node: ast.expr) -> bool:
    """`app` or `<anything>.app` (request.app, self.app, scope["app"] is not used in the service)."""
    return (isinstance(node, ast.Name) and node.id == "app") or (
        isinstance(node, ast.Attribute) and node.attr == "app"
    )


def app_state_uses(source: str) -> list[int]:
    """Line numbers where `source` touches an app's state: `request.app.state`, `app.state`, or
    `getattr(request.app, "state")`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and node.attr == "state" and _is_app(node.value)) or (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and _is_app(node.args[0])
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value == "state"
        ):
            lines.append(node.lineno)
    return sorted(lines)


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("async def h(request):\n    return request.app.state.engine\n", [2]),
        ("def f(app):\n    app.state.x = 1\n", [2]),
        ("def f(request):\n    return getattr(request.app, 'state')\n", [2]),
        ("def f(request):\n    return getattr(request.app.state, 'jobs', None)\n", [2]),
        ("def f(request):\n    return request.state.request_id, request.scope['state']\n", []),
    ],
)
def test_the_scan_finds_app_state_uses(source: str, found: list[int]) -> None:
    assert app_state_uses(source) == found


def test_only_deps_reads_app_state() -> None:
    files = sorted(SERVICE.rglob("*.py"))
    assert SERVICE / "routers" / "embeddings.py" in files and SERVICE / "jobs" / "router.py" in files
    violations = {
        str(path.relative_to(SERVICE)): lines
        for path in files
        if path not in ALLOWED and (lines := app_state_uses(path.read_text()))
    }
    assert violations == {}, f"read app.state through service/deps.py instead: {violations}"


def api_routes(routes: Sequence[BaseRoute]) -> list[APIRoute]:
    """The API routes under `routes`, also inside included routers (FastAPI wraps each one)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        included = getattr(route, "original_router", None)
        if included is not None:
            found.extend(api_routes(included.routes))
    return found


def test_every_route_solves_at_most_one_dependency_from_deps(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path / "store", tmp_path / "data"))
    routes = api_routes(app.routes)
    assert len(routes) >= 20
    used: dict[str, set[str]] = {}
    for route in routes:
        calls = [dependency.call for dependency in route.dependant.dependencies]
        assert len(calls) <= 1, f"{route.path} solves {len(calls)} dependencies per request"
        assert all(call in (deps.get_services, deps.get_inference) for call in calls), route.path
        for call in calls:
            used.setdefault(getattr(call, "__name__", ""), set()).add(route.path)
    # the inference routes pin the model; the rest take the services bundle
    assert {"/v1/embeddings", "/v1/classify", "/v1/vqa", "/v1/collections/{name}/search"} <= used[
        "get_inference"
    ]
    assert {"/ready", "/v1/models", "/v1/fine-tunes", "/v1/collections"} <= used["get_services"]

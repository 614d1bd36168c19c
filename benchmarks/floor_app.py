"""The bare ASGI floors of benchmarks/serve_load.py: what one POST costs the event loop with no model.

    python benchmarks/floor_app.py --kind starlette --port 8100
    python benchmarks/floor_app.py --kind fastapi --port 8101

Both parse the JSON body (Starlette: `request.json()`; FastAPI: a pydantic request model, as the
service's routes do) and answer with a fixed embedding-sized JSON body, under the same uvicorn
settings as `momo serve` (service/server.py: httptools with the header timeout, keep-alive, no
uvicorn access log).
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def response_body(dim: int = 128) -> bytes:
    vector = [round(0.01 * i, 6) for i in range(dim)]
    body = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vector}]}
    return json.dumps(body, separators=(",", ":")).encode()


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    body = response_body()

    async def embeddings(request: Request) -> Response:
        await request.json()
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"])])


class EmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str | None = None


def fastapi_app() -> Any:
    body = response_body()
    app = FastAPI()

    @app.post("/v1/embeddings")
    async def embeddings(request: EmbeddingRequest) -> Response:
        return Response(body, media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", choices=["starlette", "fastapi"], required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvicorn

    from service.server import uvicorn_config
    from service.settings import Settings

    settings = Settings(auth_disabled=True, port=args.port)
    app = starlette_app() if args.kind == "starlette" else fastapi_app()
    uvicorn.Server(uvicorn_config(app, settings)).run()


if __name__ == "__main__":
    main()

"""`momo serve`: every `Settings` field is a flag of the same name (`max_batch` -> `--max-batch`,
env `MOMO_MAX_BATCH`). Flags override the environment, which overrides the defaults.

Registered into the `momo` CLI by `momo.cli` (this module is imported only for `serve`/`worker`).
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any

import typer

from service.settings import Settings

_FLAG_ALIASES = {"model_store": ["--store"]}


def _option_for(name: str, field: Any) -> tuple[Any, Any]:
    """(annotation, typer.Option) for one settings field; every default is None (= not given)."""
    annotation = field.annotation
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        annotation, origin = args[0], typing.get_origin(args[0])
    flag = "--" + name.replace("_", "-")
    help_text = field.description or ""
    decls = [flag, *_FLAG_ALIASES.get(name, [])]
    if annotation is bool:
        return bool | None, typer.Option(None, f"{flag}/--no-{flag[2:]}", help=help_text, show_default=False)
    if origin is typing.Literal:
        choices = "|".join(str(c) for c in typing.get_args(annotation))
        return str | None, typer.Option(None, *decls, help=f"{help_text} [{choices}]")
    if origin is list:
        return str | None, typer.Option(None, *decls, help=help_text + " (comma-separated)")
    if annotation in (int, float, Path, str):
        return annotation | None, typer.Option(None, *decls, help=help_text)
    return str | None, typer.Option(None, *decls, help=help_text)


def _serve(**flags: Any) -> None:
    import uvicorn
    from pydantic import ValidationError

    from momo.store import ModelStore, StoreError
    from service.app import create_app
    from service.collections import collections_url
    from service.server import plan_workers, serve_workers, uvicorn_config

    overrides = {k: v for k, v in flags.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ())) or "settings"
            typer.echo(f"error: {where}: {error.get('msg')}", err=True)
        raise typer.Exit(2) from None

    store = ModelStore(settings.model_store)
    try:
        path = store.locate(settings.model)
        model_line = f"model: {store.reference_of(path)} ({path}), {settings.runtime} on {settings.device}"
    except StoreError as exc:
        model_line = (
            f"no model yet — run `make pretrain-default` (store {settings.model_store}: {exc}).\n"
            "  Serving anyway: /health answers, /ready reports 503 until a model is activated "
            "(POST /v1/models/{name}:{version}/activate)."
        )
    auth = (
        "auth: OFF (MOMO_AUTH_DISABLED=true) — anyone who can reach this port can use the API"
        if settings.auth_disabled
        else f"auth: ON — send 'Authorization: Bearer <key>' ({len(settings.api_keys)} key(s) configured)"
    )
    url = f"http://{settings.host}:{settings.port}"
    workers, threads = plan_workers(settings)
    typer.echo(f"momo serve on {url}  (docs: /docs, metrics: /metrics)")
    typer.echo(
        f"  {workers} API process(es), {threads or 'default'} runtime thread(s) each"
        + ("" if settings.workers else " (from the core count; --workers N to choose)")
    )
    if settings.ui_enabled:
        typer.echo(f"  playground: {url}/ui/")
    typer.echo(f"  {model_line}")
    typer.echo(f"  {auth}")
    typer.echo(f"  collections: {_redacted(collections_url(settings.collections_url, settings.data_dir))}")
    if workers > 1:
        serve_workers(settings, overrides, workers, threads)
        return
    if threads is not None and settings.threads is None:
        settings = settings.model_copy(update={"threads": threads})
    uvicorn.Server(uvicorn_config(create_app(settings), settings)).run()


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return url if url.startswith("sqlite") else make_url(url).render_as_string(hide_password=True)


def _flag_parameters(fields: dict[str, Any]) -> list[inspect.Parameter]:
    """One keyword-only CLI parameter per settings field (flag `--name`, env `MOMO_NAME`)."""
    parameters = []
    for name, field in fields.items():
        annotation, option = _option_for(name, field)
        parameters.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
        )
    return parameters


def _serve_command() -> Any:
    parameters = _flag_parameters(Settings.model_fields)

    def serve(**flags: Any) -> None:
        """Serve the model over HTTP (FastAPI + uvicorn). Flags = MOMO_* settings."""
        _serve(**flags)

    serve.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return serve


# --- momo worker (fine-tuning jobs) -----------------------------------------------------------------
def _worker(log_level: str | None, **flags: Any) -> None:
    from pydantic import ValidationError

    from service.jobs.database import SchemaMismatch
    from service.jobs.settings import JobSettings

    try:
        settings = JobSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ())) or "settings"
            typer.echo(f"error: {where}: {error.get('msg')}", err=True)
        raise typer.Exit(2) from None
    from service.worker import run_worker  # the worker side: imports training/

    try:
        run_worker(settings, loglevel=(log_level or "info").lower())
    except SchemaMismatch as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _worker_command() -> Any:
    from service.jobs.settings import JobSettings

    parameters = [
        inspect.Parameter(
            "log_level",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--log-level", envvar="MOMO_LOG_LEVEL", help="Logging level [info]."),
            annotation=str | None,
        )
    ]
    parameters += _flag_parameters(JobSettings.model_fields)

    def worker(**flags: Any) -> None:
        """Run a Celery worker for fine-tuning jobs. Flags = MOMO_* job settings."""
        _worker(**flags)

    worker.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return worker


# --- momo collections (the retrieval stores) ---------------------------------------------------------
collections_app = typer.Typer(help="Migrate and copy retrieval collections.", no_args_is_help=True)
DataDirOption = typer.Option(
    Path("var/service"), "--data-dir", envvar="MOMO_DATA_DIR", help="The service's data_dir."
)
UrlOption = typer.Option(
    None,
    "--collections-url",
    envvar="MOMO_COLLECTIONS_URL",
    help="The store (default: <data_dir>/collections.db).",
)


@collections_app.command("migrate")
def collections_migrate(data_dir: Path = DataDirOption, collections_url: str | None = UrlOption) -> None:
    """Bring the store's schema up to date and copy in collections of the old on-disk format
    (<data_dir>/collections/<name>/snapshot.npz + wal.log). `momo serve` does the same at start."""
    from service.collections import collections_url as resolve
    from service.collections import create_store, open_store

    store = create_store(resolve(collections_url, data_dir))
    try:
        migrated = open_store(store, data_dir / "collections")
        typer.echo(
            f"{_redacted(store.url)}: schema up to date;"
            f" migrated {len(migrated)} collection(s) {migrated or ''}"
        )
    finally:
        store.close()


@collections_app.command("copy")
def collections_copy(
    source: str = typer.Option(..., "--from", help="Store URL to read (sqlite:///… or postgresql://…)."),
    target: str = typer.Option(..., "--to", help="Store URL to write; collections must not exist there."),
) -> None:
    """Copy every collection with its items and vectors, e.g. from the embedded store to PostgreSQL."""
    from tqdm import tqdm

    from service.collections import create_store

    reader, writer = create_store(source), create_store(target)
    reader.open()
    writer.open()
    try:
        for info in reader.list_collections():
            writer.create(
                info.name,
                info.dim,
                info.model,
                index=info.index,
                description=info.description,
                metadata=info.metadata,
                created_at=info.created_at,
            )
            with tqdm(total=info.count, desc=info.name, unit="item") as progress:
                for batch in reader.items(info.name):
                    writer.upsert(info.name, batch)
                    progress.update(len(batch))
    finally:
        reader.close()
        writer.close()


def register(app: typer.Typer) -> None:
    """Add `momo serve`, `momo worker` and `momo collections` to the `momo` CLI."""
    app.command("serve", help="Serve the model over HTTP. Every flag is also a MOMO_* environment variable.")(
        _serve_command()
    )
    # `momo worker` imports the worker module (and so training/) only when it runs.
    app.command(
        "worker",
        help="Run a Celery worker for fine-tuning jobs (broker, database, store from MOMO_* or flags).",
    )(_worker_command())
    app.add_typer(collections_app, name="collections")

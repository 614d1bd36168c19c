"""`momo serve` and `momo worker`: every field of their settings model is a flag of the same name
(`max_batch` -> `--max-batch`, env `MOMO_MAX_BATCH`, a bool `--x/--no-x`), made by pydantic-settings'
CLI source from the model. Flags override the environment, which overrides the defaults. Also
`momo collections`.

Registered into the `momo` CLI through the `momo.commands` entry points of pyproject.toml (this module
is imported only for these commands and `momo --help`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import Field
from pydantic_settings import BaseSettings, CliSettingsSource

from service.jobs.settings import JobSettings
from service.settings import Settings

SettingsModel = TypeVar("SettingsModel", bound=BaseSettings)
# The flags are parsed by the settings model's CLI source (which also answers --help), not by typer.
SETTINGS_FLAGS: dict[str, Any] = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": False,
}


def given_flags(model: type[BaseSettings], args: list[str], prog: str) -> dict[str, Any]:
    """The fields that `args` sets (raw values, validated when the model is built); --help prints
    every flag and exits, an unknown flag exits 2."""
    source: CliSettingsSource[BaseSettings] = CliSettingsSource(
        model,
        cli_parse_args=args,
        cli_prog_name=prog,
        cli_kebab_case=True,
        cli_implicit_flags=True,  # bool fields: --x and --no-x
        cli_shortcuts={"model-store": "store"},
        cli_hide_none_type=True,
        cli_avoid_json=True,
    )
    return source()


def settings_or_exit(model: type[SettingsModel], flags: dict[str, Any]) -> SettingsModel:
    """`model` from the flags over the environment; invalid values: one `error: field: message` line
    each on stderr, exit 2."""
    from pydantic import ValidationError

    try:
        return model(**flags)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ())) or "settings"
            typer.echo(f"error: {where}: {error.get('msg')}", err=True)
        raise typer.Exit(2) from None


# --- momo serve -------------------------------------------------------------------------------------
def serve(ctx: typer.Context) -> None:
    """Serve the model over HTTP (FastAPI + uvicorn). Flags = MOMO_* settings."""
    import uvicorn

    from momo.store import ModelStore, StoreError
    from service.app import create_app
    from service.collections import collections_url
    from service.server import plan_workers, serve_workers, uvicorn_config

    overrides = given_flags(Settings, ctx.args, "momo serve")
    settings = settings_or_exit(Settings, overrides)
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


# --- momo worker (fine-tuning jobs) -----------------------------------------------------------------
class WorkerSettings(JobSettings):
    """`momo worker`'s flags: the job settings and the worker's logging level (env MOMO_LOG_LEVEL)."""

    log_level: str = Field(default="info", description="Logging level.")


def worker(ctx: typer.Context) -> None:
    """Run a Celery worker for fine-tuning jobs. Flags = MOMO_* job settings."""
    from service.jobs.database import SchemaMismatch

    settings = settings_or_exit(WorkerSettings, given_flags(WorkerSettings, ctx.args, "momo worker"))
    from service.worker import run_worker  # the worker side: imports training/

    try:
        run_worker(settings, loglevel=settings.log_level.lower())
    except SchemaMismatch as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


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
    app.command(
        "serve",
        **SETTINGS_FLAGS,
        help="Serve the model over HTTP. Every flag is also a MOMO_* environment variable.",
    )(serve)
    # `momo worker` imports the worker module (and so training/) only when it runs.
    app.command(
        "worker",
        **SETTINGS_FLAGS,
        help="Run a Celery worker for fine-tuning jobs (broker, database, store from MOMO_* or flags).",
    )(worker)
    app.add_typer(collections_app, name="collections")

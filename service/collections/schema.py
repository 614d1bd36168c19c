"""The collection stores' schema: Alembic migrations in `migrations/`, run at every open.

Both backends share one linear history; each revision writes the DDL of both dialects. Several
processes may open one database at once (see `service.schema_migrations`: SQLite serialises the DDL
transactions, PostgreSQL an advisory lock). The version lives in `collections_schema_version`, so
the collection tables can share a PostgreSQL database with the job records.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine, make_url

from service import schema_migrations

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "collections_schema_version"


def sqlalchemy_url(url: str) -> str:
    """`postgresql://…` (the libpq form users write) -> SQLAlchemy's psycopg 3 dialect."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest revision (no-op when it is there)."""
    schema_migrations.upgrade(engine, MIGRATIONS, VERSION_TABLE)


def migrate_sqlite(path: Path) -> None:
    """Run the migrations on an SQLite file (the embedded store then uses the sqlite3 module)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = schema_migrations.sqlite_migration_engine(make_url(f"sqlite:///{path}"))
    try:
        upgrade(engine)
    finally:
        engine.dispose()

"""The collection stores' schema: Alembic migrations in `migrations/`, run at every open.

Both backends share one linear history; each revision writes the DDL of both dialects. Several
processes may open one database at once: SQLite serialises the DDL transactions (and a second
process finds the head already applied), and on PostgreSQL an advisory lock makes the others wait.
The version lives in `collections_schema_version`, so the collection tables can share a
PostgreSQL database with the job records.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url

log = logging.getLogger("momo.service.collections")

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "collections_schema_version"
MIGRATION_LOCK = 0x6D6F6D6F  # pg_advisory_lock key ("momo")


def sqlalchemy_url(url: str) -> str:
    """`postgresql://…` (the libpq form users write) -> SQLAlchemy's psycopg 3 dialect."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest revision (no-op when it is there)."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            connection.commit()
        try:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
                connection.commit()


def migrate_sqlite(path: Path) -> None:
    """Run the migrations on an SQLite file (the embedded store then uses the sqlite3 module)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        make_url(f"sqlite:///{path}"), connect_args={"timeout": 60, "isolation_level": None}
    )

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        # the write lock from the start: a second process migrating at once waits, then finds the
        # version already at head (the version is read inside this transaction)
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        upgrade(engine)
    finally:
        engine.dispose()

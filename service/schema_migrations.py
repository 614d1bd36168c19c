"""Alembic upgrades of the service's databases, one way for all of them: the collection stores
(`service/collections/migrations/`) and the job records (`service/jobs/migrations/`).

Each area keeps its own linear history (a `migrations/` folder: `env.py`, `versions/`) and its own
version table, so several areas can share one PostgreSQL database. Migrations run when a store
opens, on a connection passed in through `config.attributes`, never from an alembic.ini. Several
processes may upgrade one database at once: on SQLite the migration connection takes the write lock
first (`BEGIN IMMEDIATE`), so a second process waits, then finds the head already applied; on
PostgreSQL an advisory lock makes the others wait.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine

MIGRATION_LOCK = 0x6D6F6D6F  # pg_advisory_lock key ("momo"), shared: one upgrade at a time per server


def alembic_config(script_location: Path, version_table: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["version_table"] = version_table
    return config


def upgrade(engine: Engine, script_location: Path, version_table: str) -> None:
    """Bring the database to the newest revision of `script_location` (no-op when it is there)."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            connection.commit()
        try:
            config = alembic_config(script_location, version_table)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
                connection.commit()


def sqlite_migration_engine(url: str | URL) -> Engine:
    """An engine for migrating an SQLite file: every transaction begins with the write lock."""
    engine = create_engine(url, connect_args={"timeout": 60, "isolation_level": None})

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        # the write lock from the start: a second process migrating at once waits, then finds the
        # version already at head (the version is read inside this transaction)
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def run_migrations() -> None:
    """The body of every `env.py`: one transaction for the version check and every migration."""
    config = context.config
    context.configure(
        connection=config.attributes["connection"], version_table=config.attributes["version_table"]
    )
    with context.begin_transaction():
        context.run_migrations()

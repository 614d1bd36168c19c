"""The job database (SQLAlchemy 2.0): SQLite by default, PostgreSQL by URL; its engine, sessions
and schema. Both the API and the worker use it; nothing here imports `training` or torch.

The schema comes from the Alembic migrations in `migrations/` (`service.schema_migrations`, the same
way as the collection stores), brought to head by `upgrade_schema()` at every start of the API, of
`momo worker` and of each worker child. The version lives in `jobs_schema_version`, so the job
tables can share a PostgreSQL database with the collections. A database written before Alembic
(tables plus a `schema_version` row) is taken over by revision 0001; one at a revision this MoMo
does not know (a newer MoMo wrote it) is refused with `SchemaMismatch` rather than misread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.util import CommandError
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from service import schema_migrations

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "jobs_schema_version"


class SchemaMismatch(RuntimeError):
    """The job database was written by a schema this MoMo cannot read or upgrade."""


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def changed(session: Session, statement: Any) -> int:
    """Execute an UPDATE and return how many rows it changed."""
    return int(getattr(session.execute(statement), "rowcount", 0) or 0)


class JobDatabase:
    """The engine and one session per call (thread-safe)."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def upgrade_schema(self) -> None:
        """Bring the schema to the newest revision; refuse a database this MoMo cannot upgrade."""
        sqlite = self.engine.dialect.name == "sqlite"
        # SQLite: a migration engine of its own, whose transactions take the write lock first
        engine = schema_migrations.sqlite_migration_engine(self.engine.url) if sqlite else self.engine
        try:
            schema_migrations.upgrade(engine, MIGRATIONS, VERSION_TABLE)
        except CommandError as exc:  # e.g. a revision this MoMo does not know
            raise SchemaMismatch(
                f"the job database {self.where()} cannot be brought to this MoMo's schema ({exc}); it "
                "was probably written by a newer MoMo: run that version, or point MOMO_DATABASE_URL at "
                "another database"
            ) from exc
        finally:
            if sqlite:
                engine.dispose()

    def where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

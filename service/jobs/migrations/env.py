"""Alembic environment of the job database: always run by `service.jobs.database.upgrade_schema`
on a connection it passes in (`config.attributes["connection"]`), never from an alembic.ini."""

from __future__ import annotations

from service.schema_migrations import run_migrations

run_migrations()

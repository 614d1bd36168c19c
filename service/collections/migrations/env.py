"""Alembic environment of the collection stores: always run by `service.collections.schema.upgrade`
on a connection it passes in (`config.attributes["connection"]`), never from an alembic.ini."""

from __future__ import annotations

from service.schema_migrations import run_migrations

run_migrations()

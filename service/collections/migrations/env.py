"""Alembic environment of the collection stores: always run by `service.collections.schema.upgrade`
on a connection it passes in (`config.attributes["connection"]`), never from an alembic.ini."""

from __future__ import annotations

from alembic import context

from service.collections.schema import VERSION_TABLE

connection = context.config.attributes["connection"]
# one transaction for the version check and every migration (see schema.migrate_sqlite)
context.configure(connection=connection, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()

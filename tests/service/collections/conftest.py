"""Collection-store fixtures: one behaviour, two backends.

`collections_url` is parametrised over the embedded store (SQLite in a temp dir) and PostgreSQL +
pgvector: a real PostgreSQL 16 server with pgvector 0.6 started from the `pgserver` wheel in a temp
dir for the session, or the server that `MOMO_TEST_PGVECTOR_URL` names (its user needs CREATEDB).
Every test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

BACKENDS = ("sqlite", "pgvector")


@pytest.fixture(scope="session")
def pgvector_server() -> Iterator[str]:
    """The admin URL of a PostgreSQL server with the vector extension available."""
    url = os.environ.get("MOMO_TEST_PGVECTOR_URL")
    if url:
        yield url
        return
    try:
        with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("pgserver is missing: it comes with the dev extra")
        pytest.skip("pgserver not installed (part of the dev extra) and MOMO_TEST_PGVECTOR_URL not set")
    # a short path: the server's Unix socket lives in its data directory (108-byte limit)
    with tempfile.TemporaryDirectory(prefix="momo-pg-") as directory:
        with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            server = pgserver.get_server(Path(directory) / "data", cleanup_mode="stop")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def _with_database(url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture()
def pgvector_url(pgvector_server: str) -> Iterator[str]:
    """A fresh database on the pgvector server, dropped after the test."""
    import psycopg

    database = f"momo_test_{uuid.uuid4().hex[:12]}"
    admin = _with_database(pgvector_server, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    yield _with_database(pgvector_server, database)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def collections_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """`MOMO_COLLECTIONS_URL` of one backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'collections.db'}"
    return str(request.getfixturevalue("pgvector_url"))

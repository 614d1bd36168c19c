"""Collections, items (vectors, metadata, thumbnails) and the embedded store's change sequence.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

SQLite (embedded): vectors are float32 BLOBs, loaded into the in-process FAISS index; metadata
filters go through `collection_item_fields` (one row per top-level key, the value as canonical
JSON, primary key (collection, field, value, key)); `collections.seq` numbers every write, each item
row carries the seq that wrote it and `collection_removals` the keys a write removed, so other
processes catch up with `seq > their seq`.

PostgreSQL: `embedding vector` (pgvector), metadata `jsonb` with a GIN index (jsonb_path_ops, for
`@>`). HNSW indexes are per collection and modality (partial expression indexes on
`embedding::vector(dim)`, which need a fixed dimension), created by the store when a collection
needs one, like partitions, not by this schema.
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SQLITE = [
    """CREATE TABLE collections (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        dim INTEGER NOT NULL,
        model TEXT NOT NULL,
        index_kind TEXT NOT NULL DEFAULT 'auto',
        description TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        text_count INTEGER NOT NULL DEFAULT 0,
        image_count INTEGER NOT NULL DEFAULT 0,
        seq INTEGER NOT NULL DEFAULT 0,
        pruned_seq INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE collection_items (
        key INTEGER PRIMARY KEY AUTOINCREMENT,
        collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
        item_id TEXT NOT NULL,
        modality TEXT NOT NULL,
        text TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        thumbnail TEXT,
        seq INTEGER NOT NULL,
        vector BLOB NOT NULL,
        UNIQUE (collection_id, item_id)
    )""",
    "CREATE INDEX ix_collection_items_seq ON collection_items (collection_id, seq)",
    """CREATE TABLE collection_item_fields (
        collection_id INTEGER NOT NULL,
        field TEXT NOT NULL,
        value TEXT NOT NULL,
        key INTEGER NOT NULL REFERENCES collection_items(key) ON DELETE CASCADE,
        PRIMARY KEY (collection_id, field, value, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX ix_collection_item_fields_key ON collection_item_fields (key)",
    """CREATE TABLE collection_removals (
        collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        key INTEGER NOT NULL,
        PRIMARY KEY (collection_id, seq, key)
    ) WITHOUT ROWID""",
]

POSTGRESQL = [
    "CREATE EXTENSION IF NOT EXISTS vector",
    """CREATE TABLE collections (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        dim INTEGER NOT NULL,
        model TEXT NOT NULL,
        index_kind TEXT NOT NULL DEFAULT 'auto',
        description TEXT,
        metadata JSONB NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        text_count BIGINT NOT NULL DEFAULT 0,
        image_count BIGINT NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE collection_items (
        key BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        collection_id BIGINT NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
        item_id TEXT NOT NULL,
        modality TEXT NOT NULL,
        text TEXT,
        metadata JSONB NOT NULL DEFAULT '{}',
        thumbnail TEXT,
        embedding vector NOT NULL,
        UNIQUE (collection_id, item_id)
    )""",
    "CREATE INDEX ix_collection_items_modality ON collection_items (collection_id, modality)",
    "CREATE INDEX ix_collection_items_metadata ON collection_items USING gin (metadata jsonb_path_ops)",
]


def upgrade() -> None:
    for statement in POSTGRESQL if op.get_bind().dialect.name == "postgresql" else SQLITE:
        op.execute(statement)


def downgrade() -> None:
    for table in ("collection_removals", "collection_item_fields", "collection_items", "collections"):
        op.execute(f"DROP TABLE IF EXISTS {table}")

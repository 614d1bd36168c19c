"""The PostgreSQL + pgvector collection store, for any number of API replicas.

Everything lives in the database and every request reads it, so replicas see each other's writes
as soon as they are committed, and none holds state that could go stale. Upserts and deletes are
transactions that lock the collection's row (`FOR UPDATE`): writers of one collection take turns,
its counts stay exact, and `max_collection_items` holds across replicas.

Search: exact (`ORDER BY embedding <#> q`, pgvector's negative inner product) below the ANN
threshold and for filtered searches; above it (or for `index: hnsw` collections) an HNSW index per
collection and modality: a partial expression index on `embedding::vector(dim)` (HNSW needs a fixed
dimension; collections of several models have several). It is built in the background with
`CREATE INDEX CONCURRENTLY` by one replica (`pgvector_hnsw.py`), while exact search serves; the ANN
query takes `top_k * rescore` candidates at `hnsw.ef_search` and orders them exactly. Metadata
filters are `metadata @> filter` (the GIN index) plus an exact `->` comparison per key; the filtered
candidates are scored exactly, so a selective filter never scans the collection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import DataError

from momo.artifact import utc_now
from service.collections.base import (
    MODALITIES,
    CollectionError,
    CollectionInfo,
    CollectionStore,
    Hit,
    IndexKind,
    Item,
    NewItem,
    SearchTuning,
    Written,
    check_name,
    check_vectors,
    count_changes,
    info_from_row,
    merge_hits,
    not_found,
)
from service.collections.pgvector_hnsw import HnswIndexes
from service.collections.schema import sqlalchemy_url, upgrade

log = logging.getLogger("momo.service.collections")

COLUMNS = "id, name, dim, model, index_kind, description, metadata, created_at, text_count, image_count"
HIT_COLUMNS = "item_id, modality, metadata, text, thumbnail"


def _info(row: RowMapping) -> CollectionInfo:
    return info_from_row(row, dict(row["metadata"]))


class PgvectorStore(CollectionStore):
    def __init__(
        self, url: str, *, max_items: int, tuning: SearchTuning, maintenance_work_mem: str = "1GB"
    ) -> None:
        self.url = url
        self.max_items = max_items
        self.tuning = tuning
        self.maintenance_work_mem = maintenance_work_mem
        self.engine = create_engine(sqlalchemy_url(url), pool_pre_ping=True, pool_size=8, max_overflow=8)
        self.hnsw = HnswIndexes(self.engine, tuning, maintenance_work_mem)

    # --- life cycle ----------------------------------------------------------------------------------
    def open(self) -> None:
        upgrade(self.engine)  # creates the vector extension first: only then can psycopg adapt it
        self.engine.dispose()

        @event.listens_for(self.engine, "connect")
        def _register_vector(dbapi_connection: Any, _record: Any) -> None:
            from pgvector.psycopg import register_vector

            register_vector(dbapi_connection)  # numpy arrays <-> vector, in binary

        for info in self.list_collections():
            self.hnsw.ensure(self.get_row(info.name))
        log.info("PostgreSQL collection store %s", self.engine.url.render_as_string(hide_password=True))

    def close(self) -> None:
        self.engine.dispose()

    def get_row(self, name: str, conn: Connection | None = None, *, lock: bool = False) -> RowMapping:
        sql = text(f"SELECT {COLUMNS} FROM collections WHERE name = :name{' FOR UPDATE' if lock else ''}")
        if conn is None:
            with self.engine.connect() as own:
                row = own.execute(sql, {"name": name}).mappings().first()
        else:
            row = conn.execute(sql, {"name": name}).mappings().first()
        if row is None:
            raise not_found(name)
        return row

    def wait_indexed(self, timeout: float) -> None:
        self.hnsw.wait(timeout)

    def ann_ready(self, name: str) -> dict[str, bool]:
        row = self.get_row(name)
        return {
            m: self.tuning.use_ann(row["index_kind"], int(row[f"{m}_count"]))
            and self.hnsw.ready(int(row["id"]), m)
            for m in MODALITIES
        }

    # --- collections ---------------------------------------------------------------------------------
    def list_collections(self) -> list[CollectionInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(text(f"SELECT {COLUMNS} FROM collections ORDER BY name")).mappings().all()
        return [_info(r) for r in rows]

    def get(self, name: str) -> CollectionInfo:
        return _info(self.get_row(name))

    def create(
        self,
        name: str,
        dim: int,
        model: str,
        *,
        index: IndexKind = "auto",
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        created_at: str | None = None,
    ) -> CollectionInfo:
        check_name(name)
        with self.engine.begin() as conn:
            created = conn.execute(
                text(
                    "INSERT INTO collections"
                    " (name, dim, model, index_kind, description, metadata, created_at) VALUES"
                    " (:name, :dim, :model, :index, :description, CAST(:metadata AS jsonb), :created_at)"
                    " ON CONFLICT (name) DO NOTHING RETURNING id"
                ),
                {
                    "name": name,
                    "dim": dim,
                    "model": model,
                    "index": index,
                    "description": description,
                    "metadata": json.dumps(metadata or {}),
                    "created_at": created_at or utc_now(),
                },
            ).scalar()
        if created is None:
            raise CollectionError(409, f"collection {name!r} already exists", "collection_exists")
        row = self.get_row(name)
        self.hnsw.ensure(row)
        return _info(row)

    def delete(self, name: str) -> None:
        with self.engine.begin() as conn:
            row = self.get_row(name, conn, lock=True)
            conn.execute(text("DELETE FROM collections WHERE id = :id"), {"id": row["id"]})  # cascades
            self.hnsw.drop(conn, int(row["id"]))

    # --- items ---------------------------------------------------------------------------------------
    def upsert(self, name: str, items: Sequence[NewItem]) -> Written:
        try:
            return self._upsert(name, items)
        except DataError as exc:  # e.g. NUL characters, which PostgreSQL text and jsonb cannot hold
            raise CollectionError(
                400, f"an item cannot be stored: {exc.orig}".splitlines()[0], "invalid_value"
            ) from exc

    def _upsert(self, name: str, items: Sequence[NewItem]) -> Written:
        with self.engine.begin() as conn:
            row = self.get_row(name, conn, lock=True)
            vectors = check_vectors(items, int(row["dim"]))
            existing = conn.execute(
                text(
                    "SELECT item_id, modality FROM collection_items"
                    " WHERE collection_id = :id AND item_id = ANY(:ids)"
                ),
                {"id": row["id"], "ids": [it.id for it in items]},
            ).all()
            counts = {"text": int(row["text_count"]), "image": int(row["image_count"])}
            counts, added = count_changes(items, {r[0]: r[1] for r in existing}, counts, self.max_items, name)
            conn.execute(
                text(
                    "INSERT INTO collection_items"
                    " (collection_id, item_id, modality, text, metadata, thumbnail, embedding)"
                    " VALUES (:cid, :item_id, :modality, :text, CAST(:metadata AS jsonb), :thumbnail,"
                    " :embedding)"
                    " ON CONFLICT (collection_id, item_id) DO UPDATE SET modality = EXCLUDED.modality,"
                    " text = EXCLUDED.text, metadata = EXCLUDED.metadata, thumbnail = EXCLUDED.thumbnail,"
                    " embedding = EXCLUDED.embedding"
                ),
                [
                    {
                        "cid": row["id"],
                        "item_id": item.id,
                        "modality": item.modality,
                        "text": item.text,
                        "metadata": json.dumps(item.metadata),
                        "thumbnail": item.thumbnail,
                        "embedding": vectors[i],
                    }
                    for i, item in enumerate(items)
                ],
            )
            conn.execute(
                text("UPDATE collections SET text_count = :t, image_count = :i WHERE id = :id"),
                {"t": counts["text"], "i": counts["image"], "id": row["id"]},
            )
        self.hnsw.ensure({**row, "text_count": counts["text"], "image_count": counts["image"]})  # type: ignore[arg-type]
        return Written(added=added, updated=len(items) - added, count=sum(counts.values()))

    def delete_items(self, name: str, ids: Sequence[str]) -> Written:
        unique = list(dict.fromkeys(ids))
        with self.engine.begin() as conn:
            row = self.get_row(name, conn, lock=True)
            gone = conn.execute(
                text(
                    "DELETE FROM collection_items WHERE collection_id = :id AND item_id = ANY(:ids)"
                    " RETURNING item_id, modality"
                ),
                {"id": row["id"], "ids": unique},
            ).all()
            counts = {"text": int(row["text_count"]), "image": int(row["image_count"])}
            for _item_id, modality in gone:
                counts[modality] -= 1
            conn.execute(
                text("UPDATE collections SET text_count = :t, image_count = :i WHERE id = :id"),
                {"t": counts["text"], "i": counts["image"], "id": row["id"]},
            )
        deleted = {item_id for item_id, _modality in gone}
        return Written(
            deleted=[i for i in unique if i in deleted],
            missing=[i for i in unique if i not in deleted],
            count=sum(counts.values()),
        )

    def get_item(self, name: str, item_id: str) -> Item | None:
        with self.engine.connect() as conn:
            row = self.get_row(name, conn)
            found = (
                conn.execute(
                    text(
                        f"SELECT {HIT_COLUMNS} FROM collection_items"
                        " WHERE collection_id = :id AND item_id = :item"
                    ),
                    {"id": row["id"], "item": item_id},
                )
                .mappings()
                .first()
            )
        if found is None:
            return None
        return Item(
            found["item_id"], found["modality"], dict(found["metadata"]), found["text"], found["thumbnail"]
        )

    def search(
        self,
        name: str,
        query: np.ndarray,
        top_k: int,
        modality: str | None = None,
        metadata: dict[str, Any] | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        row = self.get_row(name)
        cid, dim = int(row["id"]), int(row["dim"])
        query = check_vectors([NewItem("query", "text", query)], dim)[0]
        params: dict[str, Any] = {"q": query, "k": top_k}
        where = ""
        if metadata:  # GIN containment, then exact equality per key (containment is looser for arrays)
            params["filter"] = json.dumps(metadata)
            where = " AND metadata @> CAST(:filter AS jsonb)"
            for i, (key, value) in enumerate(metadata.items()):
                params[f"fk{i}"], params[f"fv{i}"] = key, json.dumps(value)
                where += f" AND metadata -> :fk{i} = CAST(:fv{i} AS jsonb)"
        hits: list[Hit] = []
        with self.engine.begin() as conn:
            for mod in (modality,) if modality else MODALITIES:
                # literals, not parameters: the planner matches a partial index only against constants
                scope = f"collection_id = {cid} AND modality = '{mod}'"
                ann = (
                    not metadata
                    and not exact
                    and self.tuning.use_ann(row["index_kind"], int(row[f"{mod}_count"]))
                    and self.hnsw.ready(cid, mod)
                )
                if ann:
                    conn.execute(
                        text("SELECT set_config('hnsw.ef_search', :ef, true)"),
                        {"ef": str(self.tuning.ef_search)},
                    )
                    sql = (
                        f"SELECT {HIT_COLUMNS}, -(embedding <#> :q) AS score FROM ("
                        f"SELECT {HIT_COLUMNS}, embedding FROM collection_items WHERE {scope}"
                        f" ORDER BY embedding::vector({dim}) <#> CAST(:q AS vector({dim})) LIMIT :fetch"
                        ") AS candidates ORDER BY embedding <#> :q LIMIT :k"
                    )
                    params["fetch"] = top_k * max(1, self.tuning.rescore)
                else:
                    sql = (
                        f"SELECT {HIT_COLUMNS}, -(embedding <#> :q) AS score FROM collection_items"
                        f" WHERE {scope}{where} ORDER BY embedding <#> :q LIMIT :k"
                    )
                for r in conn.execute(text(sql), params).mappings():
                    hits.append(
                        Hit(
                            r["item_id"],
                            float(r["score"]),
                            r["modality"],
                            dict(r["metadata"]),
                            r["text"],
                            r["thumbnail"],
                        )
                    )
        return merge_hits(hits, top_k)

    def items(self, name: str, batch: int = 1000) -> Iterator[list[NewItem]]:
        row = self.get_row(name)
        last = -1
        while True:
            with self.engine.connect() as conn:
                rows = (
                    conn.execute(
                        text(
                            f"SELECT key, {HIT_COLUMNS}, embedding FROM collection_items"
                            " WHERE collection_id = :id AND key > :last ORDER BY key LIMIT :n"
                        ),
                        {"id": row["id"], "last": last, "n": batch},
                    )
                    .mappings()
                    .all()
                )
            if not rows:
                return
            yield [
                NewItem(
                    r["item_id"],
                    r["modality"],
                    r["embedding"].to_numpy().astype(np.float32),
                    dict(r["metadata"]),
                    r["text"],
                    r["thumbnail"],
                )
                for r in rows
            ]
            last = int(rows[-1]["key"])

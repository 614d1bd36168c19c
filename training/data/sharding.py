"""`momo data shard`: write an image folder, a JSONL file or a text file as WebDataset shards.

What each source format becomes (one sample per record, keys ``000000000``, ``000000001``, ...):

=============  ========================================================================
format         members of a sample
=============  ========================================================================
image_folder   the image file's bytes + ``json`` ``{"label": <class folder>}``
pairs          the image file's bytes + ``txt`` (the caption) [+ ``json``: the record's
               optional per-item fields, when it has any]
vqa            the image file's bytes + ``json`` ``{"question", "answer"[, "type"]}``
labeled_text   ``txt`` + ``json`` ``{"label"}``
text_pairs     ``txt`` (the text) + ``json`` ``{"query"}``
text           ``txt`` (one document per line of the file)
=============  ========================================================================

Images are copied as encoded files, not re-encoded, so a shard stream decodes exactly the pixels the
in-memory stream decodes. ``index.json`` records the format, the label vocabulary (class and VQA
sources) and the source path; a source whose index already matches is skipped, and a source is
written into a temporary folder and renamed into place, so an interrupted run never leaves shards
that look done. The bundled sources go to ``<data>/shards/<the source's path without suffix>``
(`shard_location`), which is where `Recipe.from_shards` points a recipe's streams.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from training.data.formats import (
    DataFormatError,
    iter_jsonl,
    read_image_folder,
    read_labeled_text,
    read_pairs,
    read_text_lines,
    read_text_pairs,
    read_vqa,
)
from training.data.shards import INDEX_FILE, ShardSet, WebDatasetRecord, write_webdataset

SHARD_FORMATS = ("image_folder", "pairs", "vqa", "labeled_text", "text_pairs", "text")
SHARDS_DIR = "shards"


def detect_format(path: Path) -> str:
    """A folder is an image folder; a JSONL file is told apart by the keys of its first object."""
    if path.is_dir():
        return "image_folder"
    if path.suffix != ".jsonl":
        return "text"
    for _, first in iter_jsonl(path):
        if "question" in first:
            return "vqa"
        if "image" in first:
            return "pairs"
        if "label" in first:
            return "labeled_text"
        if "query" in first:
            return "text_pairs"
        raise DataFormatError(f"{path}:1: neither a pair, a VQA, a labelled-text nor a text-pair record")
    raise DataFormatError(f"{path}: empty JSONL file")


def shard_location(path: str) -> str:
    """Where `momo data shard --bundled` writes the shards of a data-relative source path."""
    return str(Path(SHARDS_DIR) / Path(path).with_suffix(""))


def source_records(path: Path, fmt: str) -> tuple[list[str] | None, Iterator[WebDatasetRecord]]:
    """(label vocabulary or None, the records of `path` in `fmt`), records read lazily."""
    if fmt == "image_folder":
        images = read_image_folder(path)
        return sorted({r.label for r in images}), (
            _image_record(i, r.path, {"label": r.label}) for i, r in enumerate(images)
        )
    if fmt == "pairs":
        pairs = read_pairs(path)

        def pair_records() -> Iterator[WebDatasetRecord]:
            for i, pair in enumerate(pairs):
                extras = {k: v for k, v in dataclasses.asdict(pair).items() if k not in ("image", "text")}
                extras = {k: v for k, v in extras.items() if v is not None}
                yield dataclasses.replace(_image_record(i, pair.image, extras or None), text=pair.text)

        return None, pair_records()
    if fmt == "vqa":
        questions = read_vqa(path)
        return sorted({q.answer for q in questions}), (
            _image_record(
                i,
                q.image,
                {"question": q.question, "answer": q.answer, **({"type": q.type} if q.type else {})},
            )
            for i, q in enumerate(questions)
        )
    if fmt == "labeled_text":
        rows = read_labeled_text(path)
        return sorted({r.label for r in rows}), (
            WebDatasetRecord(_key(i), text=r.text, meta={"label": r.label}) for i, r in enumerate(rows)
        )
    if fmt == "text_pairs":
        text_pairs = read_text_pairs(path)
        return None, (
            WebDatasetRecord(_key(i), text=p.text, meta={"query": p.query}) for i, p in enumerate(text_pairs)
        )
    if fmt == "text":
        return None, (WebDatasetRecord(_key(i), text=line) for i, line in enumerate(read_text_lines(path)))
    raise ValueError(f"unknown shard format {fmt!r}; known: {SHARD_FORMATS}")


def _key(index: int) -> str:
    return f"{index:09d}"


def _image_record(index: int, image: Path, meta: dict[str, object] | None) -> WebDatasetRecord:
    return WebDatasetRecord(_key(index), image=image.read_bytes(), image_ext=image.suffix, meta=meta)


def shard_source(
    source: Path,
    out_dir: Path,
    *,
    fmt: str | None = None,
    shard_size: int = 1000,
    shard_bytes: int | None = None,
    progress: bool = True,
) -> ShardSet:
    """Write `source` as shards into `out_dir` (skipped when an index of the same source and size is
    there); returns the written shard set."""
    fmt = fmt or detect_format(source)
    identity = {"format": fmt, "source": str(source), "shard_size": shard_size, "shard_bytes": shard_bytes}
    done = ShardSet.open([out_dir]) if (out_dir / INDEX_FILE).is_file() else None
    if done is not None and _index_matches(out_dir, identity):
        return done
    labels, records = source_records(source, fmt)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    bar = tqdm(records, desc=f"shard {source}", unit="sample", disable=not progress, mininterval=2)
    index = {**identity, **({"labels": labels} if labels is not None else {})}
    write_webdataset(bar, tmp, shard_size, shard_bytes=shard_bytes, index=index)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out_dir)
    return ShardSet.open([out_dir])


def _index_matches(out_dir: Path, identity: dict[str, object]) -> bool:
    import json

    written = json.loads((out_dir / INDEX_FILE).read_text())
    return all(written.get(k) == v for k, v in identity.items())


def bundled_sources(data_dir: Path) -> list[Path]:
    """Every file of the bundled sources that a stream can read, as `momo data prepare` wrote them."""
    from training.data.layout import source_paths

    kinds = {"image_folder", "pairs", "vqa", "labeled_text", "text_pairs", "text"}
    found = [
        path
        for splits in source_paths(data_dir).values()
        for files in splits.values()
        for kind, path in files.items()
        if kind in kinds and path.exists()
    ]
    return sorted(set(found))


def shard_bundled(
    data_dir: Path, *, shard_size: int = 1000, shard_bytes: int | None = None, progress: bool = True
) -> dict[Path, ShardSet]:
    """Shard every bundled source into ``<data_dir>/shards/...`` (see `shard_location`)."""
    sources = bundled_sources(data_dir)
    if not sources:
        raise DataFormatError(f"{data_dir}: no bundled sources found; run `momo data prepare` first")
    written: dict[Path, ShardSet] = {}
    for source in sources:
        out = data_dir / shard_location(str(source.relative_to(data_dir)))
        written[out] = shard_source(
            source, out, shard_size=shard_size, shard_bytes=shard_bytes, progress=progress
        )
    return written

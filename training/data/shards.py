"""WebDataset shards: write them, index them, read them in order or by index — with the maintained
libraries, never a tar reader of our own.

* **Writing** (`write_webdataset`) goes through `webdataset.ShardWriter`, with a fixed mtime/owner so
  the same records give byte-identical shards, and leaves an ``index.json`` beside the shards.
* **Sequential reading** (`iter_webdataset`) is a `webdataset` pipeline (tar expansion, grouping by
  key), converted into `WebDatasetRecord`s.
* **Indexed reading** (`ShardReader`) opens shards with `wids` (an mmap'd index of the members of
  one tar): sample *i* of a `ShardSet` is (shard, offset), so a training stream can be ordered,
  split and resumed by arithmetic on indices while it reads only the shards it needs, a few at a time.

A sample is the members sharing a key (``<key>.<ext>``): an image (``png``/``jpg``/``jpeg``/``webp``/
``bmp``/``gif``), ``txt`` (caption or document), ``cls`` (integer label) and ``json`` (an object:
``label``, ``question``/``answer``/``type`` for VQA, and any optional per-item fields). Every member is
optional; the reader of a stream kind asks for the ones it needs.

``index.json`` follows the `wids` shard-list descriptor (``{"wids_version": 1, "shardlist": [{"url",
"nsamples", "filesize"}]}``) and adds ``format`` (what the shards were written from) and ``labels``
(the label vocabulary of class and VQA shards). Shards without an index are counted on first use.
"""

from __future__ import annotations

import glob
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.data.formats import IMAGE_EXTENSIONS, DataFormatError

INDEX_FILE = "index.json"
SHARD_PATTERN = "shard-%06d.tar"
IMAGE_MEMBERS: tuple[str, ...] = tuple(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))


@dataclass(frozen=True)
class WebDatasetRecord:
    """One WebDataset sample. ``image`` holds the encoded file bytes, ``image_ext`` its extension."""

    key: str
    image: bytes | None = None
    image_ext: str = "png"
    text: str | None = None
    label: int | None = None
    meta: dict[str, Any] | None = field(default=None)


# --------------------------------------------------------------------------------------- shard lists


def expand_shards(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Shard paths from a list, a glob (``shards/*.tar``), a brace range (``shard-{000000..000009}.tar``)
    or a folder of shards (those its ``index.json`` lists, else its ``*.tar``). A string that is none
    of these names one shard."""
    if not isinstance(spec, str | Path):
        return [p for item in spec for p in expand_shards(item)]
    path = Path(spec)
    if path.is_dir():
        return ShardSet.open([path]).shards if (path / INDEX_FILE).is_file() else sorted(path.glob("*.tar"))
    if path.name == INDEX_FILE:
        return ShardSet.open([path]).shards
    import braceexpand

    found: list[Path] = []
    for text in braceexpand.braceexpand(str(spec)):
        found += [Path(p) for p in sorted(glob.glob(text))] if any(c in text for c in "*?[") else [Path(text)]
    return found


@dataclass
class ShardSet:
    """Shards with their sample counts (from ``index.json``, else counted by opening each shard once)."""

    shards: list[Path]
    counts: list[int]
    format: str | None = None
    labels: list[str] | None = None

    @property
    def total(self) -> int:
        return sum(self.counts)

    @classmethod
    def open(cls, specs: Sequence[str | Path]) -> ShardSet:
        """Shard folders (with an ``index.json``), index files, shard files or patterns, concatenated."""
        parts: list[ShardSet] = []
        for spec in specs:
            path = Path(spec)
            index = path / INDEX_FILE if path.is_dir() else path
            if index.name == INDEX_FILE and (index.is_file() or not path.is_dir()):
                parts.append(cls._from_index(index))
                continue
            shards = sorted(path.glob("*.tar")) if path.is_dir() else expand_shards(spec)
            if not shards:
                raise DataFormatError(f"{spec}: no shards found")
            parts.append(cls(shards, [count_samples(s) for s in shards]))
        formats = {p.format for p in parts}
        labels = sorted({label for p in parts for label in p.labels or []}) if parts else None
        return cls(
            [s for p in parts for s in p.shards],
            [c for p in parts for c in p.counts],
            format=formats.pop() if len(formats) == 1 else None,
            labels=labels or None,
        )

    @classmethod
    def _from_index(cls, index: Path) -> ShardSet:
        if not index.is_file():
            raise DataFormatError(f"{index}: not found (write shards with `momo data shard`)")
        try:
            spec = json.loads(index.read_text())
            entries = spec["shardlist"]
            shards = [index.parent / e["url"] for e in entries]
            counts = [int(e["nsamples"]) for e in entries]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataFormatError(f"{index}: not a shard index ({exc})") from exc
        return cls(shards, counts, format=spec.get("format"), labels=spec.get("labels"))


def count_samples(shard: Path) -> int:
    return len(_open_indexed(shard))


def _open_indexed(shard: Path) -> Any:
    """A `wids.IndexedTarSamples` over one shard, or DataFormatError naming it."""
    from wids.wids import IndexedTarSamples

    try:
        return IndexedTarSamples(path=str(shard))
    except Exception as exc:  # wids raises what its header parsing hits (ValueError, struct.error...)
        raise DataFormatError(f"{shard}: not a readable tar file ({type(exc).__name__}: {exc})") from exc


class ShardReader:
    """Random access to the samples of a `ShardSet`: ``reader[i] -> (shard, key, {ext: bytes})``.

    Open shards are kept in a small LRU (`cache_shards`), so a stream ordered shard-window by
    shard-window (see `training.stream_loader`) opens each shard once per window. Nothing open is
    pickled: a DataLoader worker opens its own shards.
    """

    def __init__(self, shard_set: ShardSet, cache_shards: int = 8):
        import numpy as np

        self.shard_set = shard_set
        self.cache_shards = cache_shards
        self._ends = np.cumsum(shard_set.counts)
        self._open: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return self.shard_set.total

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": OrderedDict()}

    def locate(self, index: int) -> tuple[int, int]:
        """Global sample index -> (shard number, offset in that shard)."""
        import numpy as np

        shard = int(np.searchsorted(self._ends, index, side="right"))
        return shard, index - (int(self._ends[shard - 1]) if shard else 0)

    def __getitem__(self, index: int) -> tuple[Path, str, dict[str, bytes]]:
        shard, offset = self.locate(index)
        samples = self._shard(shard)
        raw = samples[offset]
        members = {ext.lstrip(".").lower(): value.read() for ext, value in raw.items() if ext != "__key__"}
        return self.shard_set.shards[shard], str(raw["__key__"]), members

    def _shard(self, number: int) -> Any:
        if number in self._open:
            self._open.move_to_end(number)
            return self._open[number]
        path = self.shard_set.shards[number]
        samples = _open_indexed(path)
        expected = self.shard_set.counts[number]
        if len(samples) != expected:
            samples.close()
            raise DataFormatError(f"{path}: holds {len(samples)} samples, its index says {expected}")
        self._open[number] = samples
        if len(self._open) > self.cache_shards:
            _, evicted = self._open.popitem(last=False)
            evicted.close()
        return samples


# --------------------------------------------------------------------------------------- records


def record_from_members(shard: Path | str, key: str, members: dict[str, bytes]) -> WebDatasetRecord:
    """Members of one sample -> a record; DataFormatError naming the shard and key when unreadable."""
    images = [ext for ext in IMAGE_MEMBERS if ext in members]
    if len(images) > 1:
        raise DataFormatError(f"{shard}: sample {key!r}: several image members {images}")
    try:
        text = members["txt"].decode("utf-8").strip() if "txt" in members else None
        label = int(members["cls"].decode("utf-8").strip()) if "cls" in members else None
        meta = json.loads(members["json"].decode("utf-8")) if "json" in members else None
        if meta is not None and not isinstance(meta, dict):
            raise ValueError("json member is not an object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataFormatError(f"{shard}: sample {key!r}: unreadable member ({exc})") from exc
    return WebDatasetRecord(
        key=key.rsplit("/", 1)[-1],
        image=members[images[0]] if images else None,
        image_ext=images[0] if images else "png",
        text=text,
        label=label,
        meta=meta,
    )


def iter_webdataset(shard_paths: str | Path | Sequence[str | Path]) -> Iterator[WebDatasetRecord]:
    """Samples of WebDataset shards, in shard order then member order (a `webdataset` pipeline)."""
    import webdataset as wds

    for shard in expand_shards(shard_paths):
        if not shard.is_file():
            raise DataFormatError(f"{shard}: shard not found")
        pipeline = wds.DataPipeline(wds.SimpleShardList([str(shard)]), wds.tarfile_to_samples())
        try:
            for sample in pipeline:
                members = {k: v for k, v in sample.items() if not k.startswith("__")}
                yield record_from_members(shard, sample["__key__"], members)
        except DataFormatError:
            raise
        except Exception as exc:  # tarfile.ReadError and friends, as webdataset re-raises them
            raise DataFormatError(f"{shard}: not a readable tar file ({exc})") from exc


def write_webdataset(
    records: Iterable[WebDatasetRecord],
    out_dir: str | Path,
    shard_size: int = 1000,
    *,
    shard_bytes: int | None = None,
    prefix: str = "shard",
    index: dict[str, Any] | None = None,
) -> list[Path]:
    """Write records into ``out_dir/<prefix>-NNNNNN.tar`` shards of at most ``shard_size`` samples
    (and about ``shard_bytes`` bytes), plus ``index.json`` (with the extra fields of ``index``).

    Keys must be unique and free of dots and slashes (a dot would end the key when reading).
    Returns the shard paths in order.
    """
    import webdataset as wds

    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: list[int] = []
    seen: set[str] = set()
    pattern = str(out / f"{prefix}-%06d.tar")
    # mtime 0 and fixed owner/mode: the same records always give byte-identical shards.
    writer_options = {"encoder": False, "mtime": 0.0, "user": "", "group": "", "mode": 0o644}
    with wds.ShardWriter(
        pattern, maxcount=shard_size, maxsize=shard_bytes or 3e9, verbose=0, **writer_options
    ) as writer:
        for record in records:
            _check_record(record, seen)
            opened = writer.shard
            writer.write(_members(record))
            if writer.shard != opened or not counts:  # this record started a shard
                counts.append(0)
            counts[-1] += 1
    shards = [Path(pattern % i) for i in range(len(counts))]
    if not counts:  # ShardWriter opens its first shard up front; no records leave no shard
        Path(pattern % 0).unlink(missing_ok=True)
    write_index(out, shards, counts, **(index or {}))
    return shards


def write_index(out_dir: Path, shards: list[Path], counts: list[int], **extra: Any) -> Path:
    entries = [
        {"url": s.name, "nsamples": n, "filesize": s.stat().st_size}
        for s, n in zip(shards, counts, strict=True)
    ]
    path = out_dir / INDEX_FILE
    path.write_text(json.dumps({"wids_version": 1, **extra, "shardlist": entries}, indent=1) + "\n")
    return path


def _check_record(record: WebDatasetRecord, seen: set[str]) -> None:
    if not record.key or "." in record.key or "/" in record.key:
        raise ValueError(f"invalid WebDataset key {record.key!r}: must be non-empty, without '.' or '/'")
    if record.key in seen:
        raise ValueError(f"duplicate WebDataset key {record.key!r}")
    if record.image is not None and record.image_ext.lower().lstrip(".") not in IMAGE_MEMBERS:
        raise ValueError(f"unsupported image extension {record.image_ext!r}")
    seen.add(record.key)


def _members(record: WebDatasetRecord) -> dict[str, Any]:
    members: dict[str, Any] = {"__key__": record.key}
    if record.image is not None:
        members[record.image_ext.lower().lstrip(".")] = record.image
    if record.text is not None:
        members["txt"] = record.text.encode("utf-8")
    if record.label is not None:
        members["cls"] = str(int(record.label)).encode("utf-8")
    if record.meta is not None:
        members["json"] = json.dumps(record.meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return members

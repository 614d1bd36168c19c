"""Readers and writers for the on-disk data formats training reads (DESIGN.md §4).

Formats
-------
* **Image folder** — ``root/<class>/<image>``; the class is the sub-folder name.
* **Pairs JSONL** — one ``{"image": path, "text": caption}`` object per line.
* **VQA JSONL** — ``{"image", "question", "answer"}`` plus an optional ``"type"``.
* **Labelled text JSONL** — ``{"text", "label"}``.
* **Plain text** — one document per non-empty line.
* **WebDataset shards** — tar files whose members ``<key>.<ext>`` are grouped by key into samples:
  an image (``png``/``jpg``/``jpeg``/``webp``) plus ``txt`` (caption), ``cls`` (integer label) and/or
  ``json`` (metadata). Implemented with :mod:`tarfile`, so no extra dependency.

Image paths in JSONL files are relative to the folder holding the JSONL file, or absolute.
Extra keys in a JSONL object are ignored, so files can carry metadata (e.g. ``"type"`` or ``"id"``).

Malformed input policy
----------------------
Readers are **strict**: a malformed JSONL line — invalid JSON, not an object, a missing key, a value of
the wrong type, an empty text, or (for image records, by default) an image file that does not exist —
raises :class:`DataFormatError` (a :class:`ValueError`) whose message names the file, the 1-based line
number and the problem. Blank lines are skipped. We fail loudly instead of skipping bad lines because a
silently shrunken data set skews training and evaluation numbers without anyone noticing; a user
fine-tuning on an uploaded file also wants to be told exactly which line to fix. A WebDataset sample
without exactly one image, or with an unreadable ``cls``/``json`` member, raises the same error naming
the shard and the sample key.
"""

from __future__ import annotations

import glob
import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
WDS_IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")


class DataFormatError(ValueError):
    """Malformed data file; the message names the file, the line (or sample) and the problem."""


# --------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: str


@dataclass(frozen=True)
class PairRecord:
    image: Path
    text: str


@dataclass(frozen=True)
class VQARecord:
    image: Path
    question: str
    answer: str
    type: str | None = None


@dataclass(frozen=True)
class LabeledTextRecord:
    text: str
    label: str


@dataclass(frozen=True)
class WebDatasetRecord:
    """One WebDataset sample. ``image`` holds the encoded file bytes, ``image_ext`` its extension."""

    key: str
    image: bytes
    image_ext: str = "png"
    text: str | None = None
    label: int | None = None
    meta: dict[str, Any] | None = field(default=None)


# --------------------------------------------------------------------------------------- image folder


def read_image_folder(root: str | Path) -> list[ImageRecord]:
    """Every image under ``root/<class>/`` (recursively), sorted by label then path.

    Hidden files/folders and non-image files are ignored. Raises ``FileNotFoundError`` when ``root``
    is not a folder and :class:`DataFormatError` when it holds no class with images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    records: list[ImageRecord] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(class_dir.rglob("*")):
            rel = path.relative_to(class_dir)
            if any(part.startswith(".") for part in rel.parts):
                continue
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                records.append(ImageRecord(path=path, label=class_dir.name))
    if not records:
        raise DataFormatError(f"{root}: no images found in class sub-folders")
    return records


def image_folder_labels(records: Iterable[ImageRecord]) -> list[str]:
    """The sorted label vocabulary of image-folder records (index = class id)."""
    return sorted({r.label for r in records})


# --------------------------------------------------------------------------------------- JSONL


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_number, object)`` for every non-blank line; bad JSON / non-objects raise DataFormatError."""
    path = Path(path)
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write one compact JSON object per line (UTF-8, non-ASCII kept); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    return n


def _require_str(path: Path, lineno: int, obj: dict[str, Any], key: str, *, nonempty: bool = True) -> str:
    if key not in obj:
        raise DataFormatError(f"{path}:{lineno}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise DataFormatError(f"{path}:{lineno}: {key!r} must be a string, got {type(value).__name__}")
    if nonempty and not value.strip():
        raise DataFormatError(f"{path}:{lineno}: {key!r} is empty")
    return value


def _resolve_image(path: Path, lineno: int, obj: dict[str, Any], check_images: bool) -> Path:
    raw = _require_str(path, lineno, obj, "image")
    image = Path(raw)
    if not image.is_absolute():
        image = path.parent / image
    if check_images and not image.is_file():
        raise DataFormatError(f"{path}:{lineno}: image file {raw!r} not found (looked at {image})")
    return image


def read_pairs(path: str | Path, *, check_images: bool = True) -> list[PairRecord]:
    """Image–text pairs from a JSONL of ``{"image", "text"}`` objects."""
    path = Path(path)
    return [
        PairRecord(image=_resolve_image(path, n, obj, check_images), text=_require_str(path, n, obj, "text"))
        for n, obj in iter_jsonl(path)
    ]


def read_vqa(path: str | Path, *, check_images: bool = True) -> list[VQARecord]:
    """VQA triples from a JSONL of ``{"image", "question", "answer"[, "type"]}`` objects."""
    path = Path(path)
    records: list[VQARecord] = []
    for n, obj in iter_jsonl(path):
        qtype = obj.get("type")
        if qtype is not None and not isinstance(qtype, str):
            raise DataFormatError(f"{path}:{n}: 'type' must be a string, got {type(qtype).__name__}")
        records.append(
            VQARecord(
                image=_resolve_image(path, n, obj, check_images),
                question=_require_str(path, n, obj, "question"),
                answer=_require_str(path, n, obj, "answer"),
                type=qtype,
            )
        )
    return records


def read_labeled_text(path: str | Path) -> list[LabeledTextRecord]:
    """Labelled texts from a JSONL of ``{"text", "label"}`` objects.

    Labels may be strings or integers (class ids); integers are returned as their decimal string so the
    label vocabulary is always a list of strings.
    """
    path = Path(path)
    records: list[LabeledTextRecord] = []
    for n, obj in iter_jsonl(path):
        text = _require_str(path, n, obj, "text")
        if "label" not in obj:
            raise DataFormatError(f"{path}:{n}: missing key 'label'")
        label = obj["label"]
        # bool is an int subclass, but a true/false label is almost certainly a mistake
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise DataFormatError(
                f"{path}:{n}: 'label' must be a string or integer, got {type(label).__name__}"
            )
        if isinstance(label, str) and not label.strip():
            raise DataFormatError(f"{path}:{n}: 'label' is empty")
        records.append(LabeledTextRecord(text=text, label=str(label)))
    return records


def read_text_lines(path: str | Path) -> list[str]:
    """One document per non-empty line, surrounding whitespace stripped."""
    with Path(path).open("r", encoding="utf-8") as fh:
        return [s for s in (line.strip() for line in fh) if s]


# --------------------------------------------------------------------------------------- WebDataset

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_shards(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Shard paths from a list, a glob (``shards/*.tar``) or a brace range (``shard-{000000..000009}.tar``).

    A string that is neither names one shard.
    """
    if isinstance(spec, str | Path):
        text = str(spec)
        match = _BRACE.search(text)
        if match:
            lo, hi = match.group(1), match.group(2)
            width = len(lo)
            return [
                Path(text[: match.start()] + str(i).zfill(width) + text[match.end() :])
                for i in range(int(lo), int(hi) + 1)
            ]
        if any(ch in text for ch in "*?["):
            return [Path(p) for p in sorted(glob.glob(text))]
        return [Path(text)]
    return [Path(p) for p in spec]


def _split_member_name(name: str) -> tuple[str, str]:
    # WebDataset convention: the key is everything up to the first dot of the base name.
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :].lower()


def _sample_from_members(shard: Path, key: str, members: dict[str, bytes]) -> WebDatasetRecord:
    images = [ext for ext in WDS_IMAGE_EXTENSIONS if ext in members]
    if len(images) != 1:
        problem = "no image member" if not images else f"several image members {images}"
        raise DataFormatError(f"{shard}: sample {key!r}: {problem} (members: {sorted(members)})")
    text: str | None = None
    label: int | None = None
    meta: dict[str, Any] | None = None
    try:
        if "txt" in members:
            text = members["txt"].decode("utf-8").strip()
        if "cls" in members:
            label = int(members["cls"].decode("utf-8").strip())
        if "json" in members:
            loaded = json.loads(members["json"].decode("utf-8"))
            if not isinstance(loaded, dict):
                raise ValueError("json member is not an object")
            meta = loaded
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataFormatError(f"{shard}: sample {key!r}: unreadable member ({exc})") from exc
    return WebDatasetRecord(
        key=key.rsplit("/", 1)[-1],
        image=members[images[0]],
        image_ext=images[0],
        text=text,
        label=label,
        meta=meta,
    )


def iter_webdataset(shard_paths: str | Path | Sequence[str | Path]) -> Iterator[WebDatasetRecord]:
    """Samples of WebDataset tar shards, in shard order then member order.

    Consecutive members sharing a key form one sample (as in the ``webdataset`` library); members with
    unknown extensions are ignored.
    """
    for shard in expand_shards(shard_paths):
        with _open_shard(shard) as tar:
            current_key: str | None = None
            members: dict[str, bytes] = {}
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = _split_member_name(info.name)
                if key != current_key:
                    if current_key is not None and members:
                        yield _sample_from_members(shard, current_key, members)
                    current_key, members = key, {}
                fh = tar.extractfile(info)
                if fh is None:  # pragma: no cover - isfile() members always have data
                    continue
                members[ext] = fh.read()
            if current_key is not None and members:
                yield _sample_from_members(shard, current_key, members)


def _open_shard(shard: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(shard, mode="r")
    except (OSError, tarfile.TarError) as exc:
        raise DataFormatError(f"{shard}: not a readable tar file ({exc})") from exc


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed metadata (mtime 0, root owner) so the same records always give byte-identical shards.
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(
    records: Iterable[WebDatasetRecord],
    out_dir: str | Path,
    shard_size: int = 1000,
    *,
    prefix: str = "shard",
) -> list[Path]:
    """Write records into ``out_dir/<prefix>-NNNNNN.tar`` shards of ``shard_size`` samples each.

    Keys must be unique and free of dots and slashes (a dot would end the key when reading).
    Returns the shard paths in order.
    """
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    seen: set[str] = set()
    batch: list[WebDatasetRecord] = []

    def flush() -> None:
        shard = out / f"{prefix}-{len(shards):06d}.tar"
        with tarfile.open(shard, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for rec in batch:
                _write_sample(tar, rec)
        shards.append(shard)
        batch.clear()

    for record in records:
        if not record.key or "." in record.key or "/" in record.key:
            raise ValueError(f"invalid WebDataset key {record.key!r}: must be non-empty, without '.' or '/'")
        if record.key in seen:
            raise ValueError(f"duplicate WebDataset key {record.key!r}")
        if record.image_ext.lower().lstrip(".") not in WDS_IMAGE_EXTENSIONS:
            raise ValueError(f"unsupported image extension {record.image_ext!r}")
        seen.add(record.key)
        batch.append(record)
        if len(batch) == shard_size:
            flush()
    if batch:
        flush()
    return shards


def _write_sample(tar: tarfile.TarFile, record: WebDatasetRecord) -> None:
    key = record.key
    _add_member(tar, f"{key}.{record.image_ext.lower().lstrip('.')}", record.image)
    if record.text is not None:
        _add_member(tar, f"{key}.txt", record.text.encode("utf-8"))
    if record.label is not None:
        _add_member(tar, f"{key}.cls", str(int(record.label)).encode("utf-8"))
    if record.meta is not None:
        _add_member(tar, f"{key}.json", json.dumps(record.meta, sort_keys=True).encode("utf-8"))

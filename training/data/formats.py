"""Readers and writers for the on-disk data formats training reads (DESIGN.md §4).

Formats
-------
* **Image folder** — ``root/<class>/<image>``; the class is the sub-folder name.
* **Pairs JSONL** — one ``{"image": path, "text": caption}`` object per line.
* **VQA JSONL** — ``{"image", "question", "answer"}`` plus an optional ``"type"``.
* **Labelled text JSONL** — ``{"text", "label"}``.
* **Plain text** — one document per non-empty line.
* **WebDataset shards** — see :mod:`training.data.shards` (written and read with ``webdataset`` and
  ``wids``).

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
with several images, or with an unreadable ``txt``/``cls``/``json`` member, raises the same error naming
the shard and the sample key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})


class DataFormatError(ValueError):
    """Malformed data file; the message names the file, the line (or sample) and the problem."""


# --------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: str


@dataclass(frozen=True)
class PairRecord:
    """An image and its caption, with what decides whether another caption is false of the image:
    a class (``"label"`` in the JSONL; two captions of different classes are false of each other's
    images) or, for the shapes world, the scene's ``objects`` and the caption's ``claim``
    (:func:`training.data.shapes.caption_true_of`)."""

    image: Path
    text: str
    category: str | None = None
    objects: list[dict[str, Any]] | None = None
    claim: dict[str, Any] | None = None


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
class TextPairRecord:
    """Two texts that mean the same: a short ``query`` (a dictionary headword) and a ``text`` (its
    definition)."""

    query: str
    text: str


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
    records: list[PairRecord] = []
    for n, obj in iter_jsonl(path):
        label, objects, claim = obj.get("label"), obj.get("objects"), obj.get("claim")
        if label is not None and not isinstance(label, str):
            raise DataFormatError(f"{path}:{n}: 'label' must be a string, got {type(label).__name__}")
        if objects is not None and not isinstance(objects, list):
            raise DataFormatError(f"{path}:{n}: 'objects' must be a list, got {type(objects).__name__}")
        if claim is not None and not isinstance(claim, dict):
            raise DataFormatError(f"{path}:{n}: 'claim' must be an object, got {type(claim).__name__}")
        records.append(
            PairRecord(
                image=_resolve_image(path, n, obj, check_images),
                text=_require_str(path, n, obj, "text"),
                category=label,
                objects=objects,
                claim=claim,
            )
        )
    return records


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


def read_text_pairs(path: str | Path) -> list[TextPairRecord]:
    """Text pairs from a JSONL of ``{"query", "text"}`` objects."""
    path = Path(path)
    return [
        TextPairRecord(query=_require_str(path, n, obj, "query"), text=_require_str(path, n, obj, "text"))
        for n, obj in iter_jsonl(path)
    ]


def read_text_lines(path: str | Path) -> list[str]:
    """One document per non-empty line, surrounding whitespace stripped."""
    with Path(path).open("r", encoding="utf-8") as fh:
        return [s for s in (line.strip() for line in fh) if s]

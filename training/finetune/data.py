"""Fine-tuning data: strict checks of a dataset in one of the DESIGN §4 formats (every problem names
the file and line; every file it names must lie under the allowed root), decoding into arrays, and
the seeded train/validation split (grouped by image)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.finetune.options import STREAM_KIND, FinetuneError

if TYPE_CHECKING:
    import numpy as np

    from training.streams import StreamData

__all__ = ["check_dataset", "load_dataset", "split_indices"]


def _inside(path: Path, root: Path) -> bool:
    """Does `path` (symlinks resolved) lie under `root`?"""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        return False


def check_dataset(task: str, path: Path, allowed_root: Path | None = None) -> int:
    """Read the dataset's records strictly (every problem raises `DataFormatError` naming the file and
    line) and check every file it names lies under `allowed_root` (symlinks resolved). Returns the
    record count."""
    from training.data.formats import (
        DataFormatError,
        iter_jsonl,
        read_image_folder,
        read_labeled_text,
        read_pairs,
        read_vqa,
    )

    if allowed_root is not None and not _inside(path, allowed_root):
        raise FinetuneError(f"dataset {path} is outside the allowed data root")
    if task == "image_classification":
        if not path.is_dir():
            raise FinetuneError(f"{path}: image classification needs an image folder (root/<class>/<image>)")
        records = read_image_folder(path)
        if allowed_root is not None:
            for record in records:
                if not _inside(record.path, allowed_root):
                    raise DataFormatError(f"{record.path}: image resolves outside the allowed data root")
        if len({r.label for r in records}) < 2:
            raise DataFormatError(f"{path}: needs at least 2 class sub-folders with images")
        return len(records)
    if not path.is_file():
        raise FinetuneError(f"{path}: {task} needs a JSONL file")
    if path.suffix.lower() != ".jsonl":
        raise FinetuneError(f"{path}: {task} needs a .jsonl file")
    if task == "text_classification":
        texts = read_labeled_text(path)
        if len({r.label for r in texts}) < 2:
            raise DataFormatError(f"{path}: needs at least 2 distinct labels")
        return len(texts)
    images = [r.image for r in (read_pairs(path) if task == "retrieval" else read_vqa(path))]
    if allowed_root is not None:
        lines = [n for n, _ in iter_jsonl(path)]
        for lineno, image in zip(lines, images, strict=True):
            if not _inside(image, allowed_root):
                raise DataFormatError(
                    f"{path}:{lineno}: image {image} resolves outside the allowed data root"
                )
    return len(images)


def _locate_bad_image(task: str, path: Path, exc: Exception) -> str:
    """The file (and JSONL line) of the first image that does not decode (only on the failure path)."""
    from momo.preprocess import load_image_file
    from training.data.formats import iter_jsonl, read_image_folder

    candidates: list[tuple[str, Path]] = []
    if task == "image_classification":
        candidates = [(str(r.path), r.path) for r in read_image_folder(path)]
    else:
        for lineno, obj in iter_jsonl(path):
            image = Path(str(obj.get("image", "")))
            candidates.append((f"{path}:{lineno}", image if image.is_absolute() else path.parent / image))
    for where, image in candidates:
        try:
            load_image_file(image)
        except (OSError, ValueError) as err:
            return f"{where}: image {image.name} cannot be read ({err})"
    return f"{path}: an image cannot be read ({exc})"


def load_dataset(
    task: str,
    path: Path,
    config: Any,
    tokenizer: Any,
    *,
    limit: int | None = None,
    allowed_root: Path | None = None,
) -> StreamData:
    """Validate, then decode / tokenise the dataset into arrays (`training.streams.StreamData`)."""
    from training.data.formats import DataFormatError
    from training.streams import build_stream_data

    path = Path(path)
    if not path.exists():
        raise FinetuneError(f"dataset {path} does not exist")
    check_dataset(task, path, allowed_root)
    try:
        data = build_stream_data(STREAM_KIND[task], [path], config, tokenizer, limit=limit)
    except DataFormatError:
        raise
    except (OSError, ValueError) as exc:
        if task == "text_classification":
            raise DataFormatError(f"{path}: {exc}") from exc
        raise DataFormatError(_locate_bad_image(task, path, exc)) from exc
    if len(data) < 2:
        raise DataFormatError(f"{path}: {len(data)} usable record(s); a fine-tune needs at least 2")
    return data


def split_indices(data: StreamData, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices; items sharing an image stay on the same side."""
    import numpy as np

    n = len(data)
    groups = data.image_index if data.image_index is not None else np.arange(n)
    unique = np.unique(groups)
    if fraction <= 0 or len(unique) < 2:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    held = rng.permutation(unique)[: max(1, min(len(unique) - 1, round(len(unique) * fraction)))]
    is_val = np.isin(groups, held)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)

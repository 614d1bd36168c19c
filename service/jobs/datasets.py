"""Datasets for fine-tunes: uploads (stored under the data root) and caller-named paths (confined to it).

A dataset is named either by an uploaded file id or by a path *relative to the data root*
(`MOMO_DATA_ROOT`); an absolute path is accepted only when it lies inside the root. Refused with
403 `dataset_path_forbidden`: `..` components, absolute paths outside the root, and paths whose
resolved location (symlinks followed) leaves the root. The worker checks again, file by file, that
every image a dataset names resolves inside the root.

Uploads (`POST /v1/files`): a JSONL file (labelled texts, pairs, VQA) or a zip — an image folder
(`<class>/<image>`), or a JSONL with the images it names. A zip is checked before anything is
written (entry count, total uncompressed size, names without `..` or absolute paths, no symlinks)
and extracted with the bytes counted as they are written (a lying header cannot overfill the disk).
Everything is written into a temp folder and renamed into place: a failed upload leaves nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from service.jobs.records import UploadedFile, new_id, utcnow

UPLOADS = "uploads"
CHUNK = 1 << 20
JSONL_TASKS = ("text_classification", "retrieval", "vqa")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_IGNORED_TOP = {"__MACOSX"}


class DatasetError(Exception):
    """A dataset reference or upload the service refuses: HTTP `status`, error `code`, message."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_entries: int
    max_extracted_bytes: int


# --- paths -----------------------------------------------------------------------------------------
def resolve_dataset_path(root: Path, raw: str) -> Path:
    """The real location of `raw` (relative to `root`, or absolute inside it); raises DatasetError."""
    if not raw or not raw.strip() or "\x00" in raw:
        raise DatasetError(400, "dataset_path is empty or invalid", "invalid_dataset_path", "dataset_path")
    root = root.resolve()
    pure = PurePosixPath(raw.replace("\\", "/"))
    if ".." in pure.parts:
        raise DatasetError(
            403, "dataset_path must not contain '..'", "dataset_path_forbidden", "dataset_path"
        )
    candidate = Path(pure) if pure.is_absolute() else root / pure
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise DatasetError(
            403,
            "dataset_path is outside the data root (MOMO_DATA_ROOT); name a path relative to it",
            "dataset_path_forbidden",
            "dataset_path",
        )
    if not resolved.exists():
        raise DatasetError(
            404, f"no dataset at {raw!r} under the data root", "dataset_not_found", "dataset_path"
        )
    return resolved


def dataset_for_task(task: str, location: Path, param: str) -> Path:
    """The folder (image classification) or JSONL file (other tasks) to train on at `location`."""
    if task == "image_classification":
        if not location.is_dir():
            raise DatasetError(
                400, "image_classification needs an image folder (<class>/<image>)", "invalid_dataset", param
            )
        return location
    if location.is_file():
        if location.suffix.lower() != ".jsonl":
            raise DatasetError(400, f"{task} needs a .jsonl file", "invalid_dataset", param)
        return location
    found = sorted(p for p in location.rglob("*.jsonl") if p.is_file() and not _hidden(p, location))
    if len(found) != 1:
        raise DatasetError(
            400,
            f"{task} needs one .jsonl file; the dataset folder holds {len(found)} "
            "(name one with dataset_path)",
            "invalid_dataset",
            param,
        )
    return found[0]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") or part in _IGNORED_TOP for part in path.relative_to(root).parts)


# --- uploads ---------------------------------------------------------------------------------------
def _safe_filename(name: str | None) -> str:
    base = PurePosixPath((name or "upload").replace("\\", "/")).name
    cleaned = _SAFE_NAME.sub("_", base).strip("._") or "upload"
    return cleaned[:120]


def _copy_limited(source: BinaryIO, target: Path, max_bytes: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with target.open("wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise DatasetError(
                    413, f"the upload is larger than the limit of {max_bytes} bytes", "file_too_large", "file"
                )
            digest.update(chunk)
            out.write(chunk)
    if size == 0:
        raise DatasetError(400, "the uploaded file is empty", "empty_file", "file")
    return size, digest.hexdigest()


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The member's relative path, None for entries to skip; raises on unsafe names or symlinks."""
    name = info.filename.replace("\\", "/")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", name):
        raise DatasetError(400, f"zip entry {info.filename!r} has an unsafe path", "invalid_archive", "file")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DatasetError(400, f"zip entry {info.filename!r} is a symbolic link", "invalid_archive", "file")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts or parts[0] in _IGNORED_TOP or parts[-1] == ".DS_Store":
        return None
    return PurePosixPath(*parts)


def _extract(archive: Path, target: Path, limits: Limits) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(
            400, f"the upload is not a readable zip file ({exc})", "invalid_archive", "file"
        ) from exc
    with zf:
        members = zf.infolist()
        if len(members) > limits.max_entries:
            raise DatasetError(
                413,
                f"the zip has {len(members)} entries; the limit is {limits.max_entries}",
                "archive_too_large",
                "file",
            )
        declared = sum(m.file_size for m in members)
        if declared > limits.max_extracted_bytes:
            raise DatasetError(
                413,
                f"the zip expands to {declared} bytes; the limit is {limits.max_extracted_bytes}",
                "archive_too_large",
                "file",
            )
        written = 0
        for info in members:
            rel = _member_path(info)
            if rel is None:
                continue
            dest = target.joinpath(*rel.parts)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, dest.open("wb") as out:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > limits.max_extracted_bytes:
                            raise DatasetError(
                                413,
                                f"the zip expands to more than {limits.max_extracted_bytes} bytes",
                                "archive_too_large",
                                "file",
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as exc:
                raise DatasetError(
                    400, f"zip entry {info.filename!r} cannot be extracted ({exc})", "invalid_archive", "file"
                ) from exc


def _dataset_root(folder: Path) -> Path:
    """Descend through single wrapping folders (a zip of `myset/` holds `myset/<class>/…`)."""
    current = folder
    while True:
        visible = [p for p in current.iterdir() if not p.name.startswith(".") and p.name not in _IGNORED_TOP]
        if len(visible) != 1 or not visible[0].is_dir():
            return current
        current = visible[0]


def store_upload(source: BinaryIO, filename: str | None, root: Path, limits: Limits) -> UploadedFile:
    """Write an upload under `<root>/uploads/<file id>/` (atomically) and describe it."""
    name = _safe_filename(filename)
    suffix = Path(name).suffix.lower()
    if suffix not in (".jsonl", ".zip"):
        raise DatasetError(
            400,
            "upload a .jsonl file (texts, pairs or VQA) or a .zip (an image folder, or a JSONL with "
            "its images)",
            "unsupported_file_type",
            "file",
        )
    file_id = new_id("file")
    uploads = root / UPLOADS
    uploads.mkdir(parents=True, exist_ok=True)
    tmp = uploads / f".tmp-{file_id}"
    tmp.mkdir()
    try:
        if suffix == ".jsonl":
            size, sha = _copy_limited(source, tmp / name, limits.max_bytes)
            relative = Path(UPLOADS) / file_id / name
        else:
            archive = uploads / f".tmp-{file_id}.zip"
            try:
                size, sha = _copy_limited(source, archive, limits.max_bytes)
                _extract(archive, tmp, limits)
            finally:
                archive.unlink(missing_ok=True)
            dataset = _dataset_root(tmp)
            relative = Path(UPLOADS) / file_id / dataset.relative_to(tmp)
        os.rename(tmp, uploads / file_id)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return UploadedFile(
        id=file_id,
        filename=name,
        kind=suffix.lstrip("."),
        path=relative.as_posix(),
        bytes=size,
        sha256=sha,
        created_at=utcnow(),
    )

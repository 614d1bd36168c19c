"""Training data: readers/writers for the standard formats, the shapes-world generator, the bundled
sources and `prepare_all`, which writes them all under the data folder (DESIGN.md §4).

The format readers are imported eagerly (standard library only; the shard readers import `webdataset`
and `wids` on first use); the preparation API is loaded on first
use, so importing this package (e.g. for the CLI) does not pull in numpy and Pillow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from training.data.formats import (
    DataFormatError,
    ImageRecord,
    LabeledTextRecord,
    PairRecord,
    VQARecord,
    image_folder_labels,
    iter_jsonl,
    read_image_folder,
    read_labeled_text,
    read_pairs,
    read_text_lines,
    read_vqa,
    write_jsonl,
)
from training.data.shards import WebDatasetRecord, expand_shards, iter_webdataset, write_webdataset

if TYPE_CHECKING:
    from training.data.layout import DEFAULT_DATA_DIR, source_paths
    from training.data.prepare import prepare_all, prepare_command

# name -> the module that defines it, imported on first use
_LAZY = {
    "DEFAULT_DATA_DIR": "training.data.layout",
    "source_paths": "training.data.layout",
    "prepare_all": "training.data.prepare",
    "prepare_command": "training.data.prepare",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_DATA_DIR",
    "DataFormatError",
    "ImageRecord",
    "LabeledTextRecord",
    "PairRecord",
    "VQARecord",
    "WebDatasetRecord",
    "expand_shards",
    "image_folder_labels",
    "iter_jsonl",
    "iter_webdataset",
    "prepare_all",
    "prepare_command",
    "read_image_folder",
    "read_labeled_text",
    "read_pairs",
    "read_text_lines",
    "read_vqa",
    "source_paths",
    "write_jsonl",
    "write_webdataset",
]

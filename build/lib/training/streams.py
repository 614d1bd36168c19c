"""In-memory datasets for the four stream kinds and a loader that resumes exactly.

Kinds: `image` (pixels), `text` (tokens), `pair` (pixels + caption tokens), `vqa` (pixels +
question tokens + answer label), `image_class` / `text_class` (inputs + class label).
Images are decoded once with `momo.preprocess` (the same code the service uses), kept as uint8 at
model resolution, and normalised per batch. A `StreamLoader`'s position (epoch, cursor) is part of
every checkpoint, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from momo.config import MoMoConfig
from momo.preprocess import load_image_file, resize_rgb_uint8
from momo.tokenizer import MoMoTokenizer
from training.data.formats import (
    read_image_folder,
    read_labeled_text,
    read_pairs,
    read_text_lines,
    read_vqa,
)
from training.losses.base import Batch

STREAM_KINDS = ("image", "text", "pair", "vqa", "image_class", "text_class")


@dataclass
class StreamData:
    """Arrays of one stream. images: (N, H, W, 3) uint8; tokens: (N, L) int64 padded; labels: (N,)."""

    kind: str
    images: np.ndarray | None = None
    image_index: np.ndarray | None = None  # (N,) row of `images` per item (images are shared)
    tokens: np.ndarray | None = None
    lengths: np.ndarray | None = None
    labels: np.ndarray | None = None
    label_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        for value in (self.image_index, self.tokens, self.labels):
            if value is not None:
                return len(value)
        return 0


def _load_images(paths: Sequence[Path], config: MoMoConfig, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode each distinct path once -> (unique images (U, H, W, 3) uint8, index per path (N,))."""
    unique: dict[Path, int] = {}
    index = np.empty(len(paths), dtype=np.int64)
    for i, path in enumerate(paths):
        index[i] = unique.setdefault(path, len(unique))
    images = np.empty((len(unique), config.image_size, config.image_size, 3), dtype=np.uint8)
    for path, row in tqdm(
        unique.items(), desc=f"decode {desc}", leave=False, disable=len(unique) < 2000, mininterval=5
    ):
        images[row] = resize_rgb_uint8(load_image_file(path), config)
    return images, index


def _tokenize(
    texts: Sequence[str], tokenizer: MoMoTokenizer, config: MoMoConfig
) -> tuple[np.ndarray, np.ndarray]:
    batch = tokenizer.encode_batch(list(texts), config.max_text_len, pad_to=config.max_text_len)
    return batch.input_ids, batch.attention_mask.sum(axis=1)


def build_stream_data(
    kind: str,
    paths: Sequence[Path],
    config: MoMoConfig,
    tokenizer: MoMoTokenizer,
    *,
    limit: int | None = None,
    label_names: list[str] | None = None,
) -> StreamData:
    """Read `paths` (all in the format the kind implies) into arrays.

    image: image folders or pair JSONL files (images only); text: text files or labelled-text JSONL;
    pair: pair JSONL; vqa: VQA JSONL (answers -> `label_names`, fixed when given);
    image_class: image folders; text_class: labelled-text JSONL.
    """
    if kind not in STREAM_KINDS:
        raise ValueError(f"unknown stream kind {kind!r}; known: {STREAM_KINDS}")
    name = ",".join(p.name for p in paths)
    if kind in ("image", "image_class"):
        files: list[Path] = []
        classes: list[str] = []
        for path in paths:
            if path.is_dir():
                records = read_image_folder(path)
                files += [r.path for r in records]
                classes += [r.label for r in records]
            else:
                files += [r.image for r in read_pairs(path)]
                classes += [""] * (len(files) - len(classes))
        files, classes = _limit(files, limit), _limit(classes, limit)
        images, index = _load_images(files, config, name)
        data = StreamData(kind, images=images, image_index=index)
        return _with_labels(data, classes, label_names) if kind == "image_class" else data
    if kind in ("text", "text_class"):
        texts: list[str] = []
        text_labels: list[str] = []
        for path in paths:
            if path.suffix == ".jsonl":
                rows = read_labeled_text(path)
                texts += [r.text for r in rows]
                text_labels += [r.label for r in rows]
            else:
                lines = read_text_lines(path)
                texts += lines
                text_labels += [""] * len(lines)
        texts, text_labels = _limit(texts, limit), _limit(text_labels, limit)
        tokens, lengths = _tokenize(texts, tokenizer, config)
        data = StreamData(kind, tokens=tokens, lengths=lengths)
        return _with_labels(data, text_labels, label_names) if kind == "text_class" else data
    if kind == "pair":
        pairs = _limit([p for path in paths for p in read_pairs(path)], limit)
        images, index = _load_images([p.image for p in pairs], config, name)
        tokens, lengths = _tokenize([p.text for p in pairs], tokenizer, config)
        return StreamData(kind, images=images, image_index=index, tokens=tokens, lengths=lengths)
    vqa = _limit([q for path in paths for q in read_vqa(path)], limit)
    answers = label_names or sorted({q.answer for q in vqa})
    known = set(answers)
    vqa = [q for q in vqa if q.answer in known]  # answers outside a fixed vocabulary cannot be learnt
    images, index = _load_images([q.image for q in vqa], config, name)
    tokens, lengths = _tokenize([q.question for q in vqa], tokenizer, config)
    return StreamData(
        kind,
        images=images,
        image_index=index,
        tokens=tokens,
        lengths=lengths,
        labels=_label_ids([q.answer for q in vqa], answers),
        label_names=list(answers),
    )


def _limit(items: list[Any], limit: int | None) -> list[Any]:
    return items if limit is None else items[:limit]


def _with_labels(data: StreamData, labels: Sequence[str], label_names: list[str] | None) -> StreamData:
    """Attach class ids; the vocabulary is `label_names` when fixed, else the sorted labels seen."""
    data.label_names = label_names or sorted(set(labels))
    data.labels = _label_ids(labels, data.label_names)
    return data


def _label_ids(labels: Sequence[str], names: Sequence[str]) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(labels) - set(lookup))
    if unknown:
        raise ValueError(f"labels not in the label vocabulary: {unknown[:10]}")
    return np.asarray([lookup[label] for label in labels], dtype=np.int64)


def normalize_uint8(images: np.ndarray, config: MoMoConfig) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, the same arithmetic as `momo.preprocess`."""
    pixels = torch.from_numpy(images).float() / 255.0
    mean = torch.tensor(config.image_mean, dtype=torch.float32)
    std = torch.tensor(config.image_std, dtype=torch.float32)
    return ((pixels - mean) / std).permute(0, 3, 1, 2).contiguous()


def make_batch(data: StreamData, indices: np.ndarray, config: MoMoConfig) -> Batch:
    batch = Batch(meta={"kind": data.kind})
    if data.images is not None and data.image_index is not None:
        batch.pixels = normalize_uint8(data.images[data.image_index[indices]], config)
    if data.tokens is not None and data.lengths is not None:
        length = max(1, int(data.lengths[indices].max()))  # pad to the longest item in the batch
        ids = torch.from_numpy(data.tokens[indices, :length].copy())
        positions = torch.arange(length)[None, :]
        batch.input_ids = ids
        batch.attention_mask = (positions < torch.from_numpy(data.lengths[indices])[:, None]).long()
    if data.labels is not None:
        batch.labels = torch.from_numpy(data.labels[indices].copy())
    return batch


class StreamLoader:
    """Endless batches over one dataset: a fresh seeded permutation per epoch, last partial batch
    dropped. Under data parallelism every rank walks the same permutation and takes its share of
    each global batch (`indices[rank::world]`)."""

    def __init__(
        self, name: str, data: StreamData, batch_size: int, seed: int, rank: int = 0, world: int = 1
    ):
        if len(data) < batch_size:
            raise ValueError(f"stream {name!r} has {len(data)} items, fewer than its batch size {batch_size}")
        self.name, self.data, self.batch_size = name, data, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch, self.cursor = 0, 0
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.data))
            self._perm_epoch = self.epoch
        return self._perm

    def next_indices(self) -> np.ndarray:
        if self.cursor + self.batch_size > len(self.data):
            self.epoch, self.cursor = self.epoch + 1, 0
        indices = self._permutation()[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return indices[self.rank :: self.world]

    def next_batch(self, config: MoMoConfig) -> Batch:
        return make_batch(self.data, self.next_indices(), config)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])

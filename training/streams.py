"""What a stream yields, whatever it reads from: samples, and the one function that batches them.

Kinds: `image` (pixels), `text` (tokens), `pair` (pixels + caption tokens), `vqa` (pixels +
question tokens + answer label), `image_class` / `text_class` (inputs + class label), `text_pair`
(two texts that mean the same: a headword and its definition).

A stream *source* is a sequence of `Sample`s: `StreamData` here (every item decoded into RAM once,
for the small recipes) or `training.shard_streams.ShardStream` (decoded on demand from WebDataset
shards, in DataLoader workers). Both hand their samples to `Collate`, the one place a `Batch` is
built, so a change to what a batch holds lands once. `training.stream_loader` orders, splits and
resumes either source.

Images are decoded with `momo.preprocess` (the same code the service uses), kept as uint8 at
model resolution, and normalised per batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from momo.config import MoMoConfig
from momo.preprocess import load_image_file, resize_rgb_uint8
from momo.tokenizer import MoMoTokenizer
from training.data.formats import (
    DataFormatError,
    read_image_folder,
    read_labeled_text,
    read_pairs,
    read_text_lines,
    read_text_pairs,
    read_vqa,
)
from training.losses.base import Batch

STREAM_KINDS = ("image", "text", "pair", "vqa", "image_class", "text_class", "text_pair")

Sample = dict[str, Any]
"""One item of a stream, as every source yields it:

    image:  (H, W, 3) uint8 at model resolution    (image, pair, vqa, image_class)
    tokens: (L,) int64 ids, unpadded, L <= max_text_len   (text, pair, vqa, text_class, text_pair)
    label:  int                                     (vqa, image_class, text_class)
    query_tokens: (Q,) int64 ids, unpadded           (text_pair: the text `tokens` means the same as)

Any other key is an optional per-item field (e.g. what a caption claims about its image); `Collate`
carries it into `Batch.meta[key]` as a list of B values. A source returns None for an item it had
to skip (a corrupt shard sample, with `on_error: skip`); `Collate` drops and counts those.
"""
BATCH_FIELDS = ("image", "tokens", "label", "query_tokens")


class StreamSource(Protocol):
    """A sequence of samples; `shard_lengths` splits it into the shards the order shuffles."""

    kind: str
    label_names: list[str]
    pad_id: int  # the tokenizer's padding id, for `Collate`

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample | None: ...

    @property
    def shard_lengths(self) -> list[int]: ...


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
    pad_id: int = 0
    extras: dict[str, list[Any]] = field(default_factory=dict)  # optional per-item fields

    def __len__(self) -> int:
        for value in (self.image_index, self.tokens, self.labels):
            if value is not None:
                return len(value)
        return 0

    @property
    def shard_lengths(self) -> list[int]:
        return [len(self)]  # one "shard": the order is a plain permutation

    def __getitem__(self, index: int) -> Sample:
        sample: Sample = {key: values[index] for key, values in self.extras.items()}
        if self.images is not None and self.image_index is not None:
            sample["image"] = self.images[self.image_index[index]]
        if self.tokens is not None and self.lengths is not None:
            sample["tokens"] = self.tokens[index, : self.lengths[index]]
        if self.labels is not None:
            sample["label"] = int(self.labels[index])
        return sample


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
    image_class: image folders; text_class: labelled-text JSONL; text_pair: text-pair JSONL.
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
        data = StreamData(kind, tokens=tokens, lengths=lengths, pad_id=tokenizer.pad_id)
        return _with_labels(data, text_labels, label_names) if kind == "text_class" else data
    if kind == "text_pair":
        text_pairs = _limit([p for path in paths for p in read_text_pairs(path)], limit)
        tokens, lengths = _tokenize([p.text for p in text_pairs], tokenizer, config)
        query_tokens, query_lengths = _tokenize([p.query for p in text_pairs], tokenizer, config)
        queries = [query_tokens[i, : query_lengths[i]] for i in range(len(text_pairs))]
        return StreamData(
            kind, tokens=tokens, lengths=lengths, pad_id=tokenizer.pad_id, extras={"query_tokens": queries}
        )
    if kind == "pair":
        pairs = _limit([p for path in paths for p in read_pairs(path)], limit)
        images, index = _load_images([p.image for p in pairs], config, name)
        tokens, lengths = _tokenize([p.text for p in pairs], tokenizer, config)
        return StreamData(
            kind,
            images=images,
            image_index=index,
            tokens=tokens,
            lengths=lengths,
            pad_id=tokenizer.pad_id,
            extras=record_extras(pairs, ("image", "text")),
        )
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
        pad_id=tokenizer.pad_id,
    )


def record_extras(records: Sequence[Any], known: tuple[str, ...]) -> dict[str, list[Any]]:
    """The optional per-item fields of reader records (dataclass fields beyond `known` that some
    record sets), as one list per field."""
    if not records:
        return {}
    names = [f.name for f in dataclasses.fields(records[0]) if f.name not in known]
    columns = {name: [getattr(r, name) for r in records] for name in names}
    return {name: values for name, values in columns.items() if any(v is not None for v in values)}


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


@dataclass(frozen=True)
class Collate:
    """Samples -> one `Batch`: the one place a batch is built, for every source (and fine-tuning).

    pixels (B, 3, H, W) float32 normalised; input_ids / attention_mask (B, L) with L the longest item
    (padded with `pad_id`); labels (B,); other sample keys -> `meta[key]` as B values; `meta["kind"]`
    and `meta["skipped"]` (items a source returned as None). A `text_pair` batch holds 2B texts: rows
    0..B-1 the queries, rows B..2B-1 their texts, and `meta["pair_size"]` = B. Picklable: it runs in
    DataLoader workers.
    """

    kind: str
    config: MoMoConfig
    pad_id: int = 0

    def __call__(self, samples: Sequence[Sample | None]) -> Batch:
        kept = [s for s in samples if s is not None]
        if not kept:
            raise DataFormatError(f"every item of a {self.kind!r} batch of {len(samples)} was skipped")
        batch = Batch(meta={"kind": self.kind, "skipped": len(samples) - len(kept)})
        first = kept[0]
        if "image" in first:
            batch.pixels = normalize_uint8(np.stack([s["image"] for s in kept]), self.config)
        if "tokens" in first:
            sequences = [s["tokens"] for s in kept]
            if "query_tokens" in first:
                sequences = [s["query_tokens"] for s in kept] + sequences
                batch.meta["pair_size"] = len(kept)
            lengths = np.asarray([len(t) for t in sequences], dtype=np.int64)
            ids = np.full((len(sequences), max(1, int(lengths.max()))), self.pad_id, dtype=np.int64)
            for row, tokens in enumerate(sequences):
                ids[row, : lengths[row]] = tokens
            positions = torch.arange(ids.shape[1])[None, :]
            batch.input_ids = torch.from_numpy(ids)
            batch.attention_mask = (positions < torch.from_numpy(lengths)[:, None]).long()
        if "label" in first:
            batch.labels = torch.tensor([s["label"] for s in kept], dtype=torch.int64)
        for key in first.keys() - set(BATCH_FIELDS):
            batch.meta[key] = [s.get(key) for s in kept]
        return batch


def make_batch(data: StreamData, indices: np.ndarray, config: MoMoConfig) -> Batch:
    """The batch of `data`'s items at `indices` (through `Collate`, like every stream)."""
    return Collate(data.kind, config, data.pad_id)([data[int(i)] for i in indices])

"""A stream source over WebDataset shards: item i is read and decoded when a batch asks for it.

`ShardStream` is the shard twin of `training.streams.StreamData`: the same `Sample`s (uint8 image at
model resolution, unpadded token ids, label id, optional per-item fields), decoded with the same
`momo.preprocess` and tokenizer calls, so one `Collate` batches both. It runs in the DataLoader
workers of `training.stream_loader`, which open only the shards their micro-batches touch.

What a kind reads from a sample (see `training.data.sharding` for how shards are written):
image -> the image; text -> ``txt``; pair -> image + ``txt``; vqa -> image + ``json`` question and
answer; image_class / text_class -> image or ``txt`` + ``json`` ``label`` (or an integer ``cls``).
Other ``json`` fields are passed through as optional per-item fields.

A sample that cannot be read (corrupt image, missing member, bad JSON) fails with
`DataFormatError` naming the shard and the key (``on_error: raise``, the default), or is skipped and
counted (``on_error: skip``; the count is logged per stream as ``<stream>/skipped``). A VQA answer
outside a fixed answer vocabulary is skipped either way (it cannot be learnt), as in RAM.
"""

from __future__ import annotations

from typing import Any, Literal

from momo.config import MoMoConfig
from momo.preprocess import decode_image, resize_rgb_uint8
from momo.tokenizer import MoMoTokenizer
from training.data.formats import DataFormatError
from training.data.shards import ShardReader, ShardSet, WebDatasetRecord, record_from_members
from training.streams import STREAM_KINDS, Sample

OnError = Literal["raise", "skip"]
IMAGE_KINDS = ("image", "pair", "vqa", "image_class")
TEXT_KINDS = ("text", "pair", "text_class", "text_pair")
LABEL_KINDS = ("vqa", "image_class", "text_class")
RESERVED_META = ("label", "question", "answer", "type", "query")


class ShardStream:
    """Samples of `shard_set` for one stream kind (see the module docstring)."""

    def __init__(
        self,
        kind: str,
        shard_set: ShardSet,
        config: MoMoConfig,
        tokenizer: MoMoTokenizer,
        *,
        limit: int | None = None,
        label_names: list[str] | None = None,
        on_error: OnError = "raise",
        cache_shards: int = 8,
    ):
        if kind not in STREAM_KINDS:
            raise ValueError(f"unknown stream kind {kind!r}; known: {STREAM_KINDS}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.kind, self.config, self.tokenizer, self.on_error = kind, config, tokenizer, on_error
        self.reader = ShardReader(shard_set, cache_shards)
        self.total = shard_set.total if limit is None else min(limit, shard_set.total)
        self.label_names: list[str] = []
        if kind in LABEL_KINDS:
            self.label_names = list(label_names or shard_set.labels or self._scan_labels())
        self._label_ids = {name: i for i, name in enumerate(self.label_names)}
        self.pad_id = tokenizer.pad_id

    def __len__(self) -> int:
        return self.total

    @property
    def shard_lengths(self) -> list[int]:
        """Per-shard counts, cut at `limit` (the first `limit` items of the shard set)."""
        lengths, left = [], self.total
        for count in self.reader.shard_set.counts:
            if left <= 0:
                break
            lengths.append(min(count, left))
            left -= lengths[-1]
        return lengths

    def __getitem__(self, index: int) -> Sample | None:
        shard, key, members = self.reader[index]
        try:
            return self._decode(record_from_members(shard, key, members))
        except (DataFormatError, ValueError) as exc:  # ImageDecodeError is a ValueError
            if self.on_error == "skip":
                return None
            if isinstance(exc, DataFormatError) and str(shard) in str(exc):
                raise
            raise DataFormatError(f"{shard}: sample {key!r}: {exc}") from exc

    def _decode(self, record: WebDatasetRecord) -> Sample | None:
        meta: dict[str, Any] = dict(record.meta or {})
        sample: Sample = {k: v for k, v in meta.items() if k not in RESERVED_META}
        if self.kind in IMAGE_KINDS:
            if record.image is None:
                raise ValueError("no image member")
            sample["image"] = resize_rgb_uint8(decode_image(record.image), self.config)
        text = meta.get("question") if self.kind == "vqa" else record.text
        if self.kind in TEXT_KINDS or self.kind == "vqa":
            if not isinstance(text, str) or not text.strip():
                raise ValueError("no question in its json member" if self.kind == "vqa" else "no txt member")
            encoded = self.tokenizer.encode_batch([text], self.config.max_text_len)
            sample["tokens"] = encoded.input_ids[0, : int(encoded.attention_mask[0].sum())]
        if self.kind == "text_pair":
            query = meta.get("query")
            if not isinstance(query, str) or not query.strip():
                raise ValueError("no query in its json member")
            encoded = self.tokenizer.encode_batch([query], self.config.max_text_len)
            sample["query_tokens"] = encoded.input_ids[0, : int(encoded.attention_mask[0].sum())]
        if self.kind in LABEL_KINDS:
            label = self._label(record, meta)
            if label not in self._label_ids:
                if self.kind == "vqa":
                    return None  # an answer the fixed vocabulary does not have cannot be learnt
                raise ValueError(f"label {label!r} is not in the label vocabulary")
            sample["label"] = self._label_ids[label]
        return sample

    def _label(self, record: WebDatasetRecord, meta: dict[str, Any]) -> str:
        value = meta.get("answer" if self.kind == "vqa" else "label")
        if value is None and self.kind != "vqa" and record.label is not None:
            value = record.label  # an integer `cls` member, as in foreign class shards
        if value is None:
            raise ValueError(f"no {'answer' if self.kind == 'vqa' else 'label'} in the sample")
        return str(value)

    def _scan_labels(self) -> list[str]:
        """The label vocabulary of shards without an index that lists it (reads every sample once)."""
        from tqdm import tqdm

        labels: set[str] = set()
        for index in tqdm(range(self.total), desc="scan labels", leave=False, disable=self.total < 5000):
            shard, key, members = self.reader[index]
            record = record_from_members(shard, key, members)
            labels.add(self._label(record, dict(record.meta or {})))
        return sorted(labels)

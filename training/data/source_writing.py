"""What the bundled-source writers share: the fixed splits, stable hashes for a record's split and
for a limited subset's order, per-split limits, progress bars, the labelled-text writer and the
article of caption templates.

A record's split comes from a SHA-256 of a key (80/10/10), never from its position, so a record never
changes split when limits or other records change; a limit keeps the first records in a hash order,
a random subset that stays the same for the same limit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from training.data.formats import write_jsonl

SPLITS: tuple[str, ...] = ("train", "val", "test")
Limits = Mapping[str, int | None]


def hash_split(key: str) -> str:
    """Stable 80/10/10 split from a SHA-256 of ``key`` (Python's ``hash`` is salted per process)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


def hash_order(key: str) -> bytes:
    # a stable pseudo-random order, used to take a limited but unbiased subset
    return hashlib.sha256(b"order:" + key.encode("utf-8")).digest()


def article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def split_limit(limits: Limits | None, split: str) -> int | None:
    return None if limits is None else limits.get(split)


def progress_bar(total: int | None, desc: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="item", disable=not progress, leave=False, dynamic_ncols=True)


def write_labeled_splits(
    out_dir: Path,
    records: Iterable[tuple[str, dict[str, Any]]],
    labels: list[str],
    limits: Limits | None,
    split_key: Callable[[str], str] = lambda key: key,
) -> dict[str, int]:
    """Rows keyed for hashing -> ``<split>.jsonl`` (limited to a stable random subset) + ``labels.json``
    (when there are labels). ``split_key`` picks the part of a key the split is hashed from."""
    by_split: dict[str, list[tuple[str, dict[str, Any]]]] = {s: [] for s in SPLITS}
    for key, row in records:
        by_split[hash_split(split_key(key))].append((key, row))
    out_dir.mkdir(parents=True, exist_ok=True)
    if labels:
        (out_dir / "labels.json").write_text(json.dumps(labels) + "\n", encoding="utf-8")
    counts: dict[str, int] = {}
    for split in SPLITS:
        rows = by_split[split]
        lim = split_limit(limits, split)
        if lim is not None and len(rows) > lim:
            keep = {k for k, _ in sorted(rows, key=lambda kr: hash_order(kr[0]))[:lim]}
            rows = [kr for kr in rows if kr[0] in keep]
        counts[split] = write_jsonl(out_dir / f"{split}.jsonl", (row for _, row in rows))
    return counts

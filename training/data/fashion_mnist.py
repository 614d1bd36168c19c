"""Fashion-MNIST (Debian ``dataset-fashion-mnist``): 70 000 real 28×28 grayscale images in 10 classes,
for image-only pretraining, the linear probe and templated captions for image–text pairs.

Layout written by :func:`write_fashion_mnist`::

    fashion_mnist/classes.json                     [{"name": "tshirt_top", "label": "t-shirt"}, ...]
    fashion_mnist/<split>/images/<class>/<n>.png   image folder, 28×28 grayscale; <n> = official index
    fashion_mnist/<split>/pairs.jsonl              one templated caption per image

Splits: the official train set minus a fixed 5 000 for val, and the official test set.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.data.formats import write_jsonl
from training.data.source_writing import SPLITS, Limits, article, hash_order, progress_bar, split_limit

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# (filesystem-safe folder name, human label used in captions), in class-id order
FASHION_CLASSES: tuple[tuple[str, str], ...] = (
    ("tshirt_top", "t-shirt"),
    ("trouser", "trouser"),
    ("pullover", "pullover"),
    ("dress", "dress"),
    ("coat", "coat"),
    ("sandal", "sandal"),
    ("shirt", "shirt"),
    ("sneaker", "sneaker"),
    ("bag", "bag"),
    ("ankle_boot", "ankle boot"),
)
FASHION_CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of {a} {label}",
    "{a} {label}",
    "a picture of {a} {label}",
    "a black and white photo of {a} {label}",
    "a grayscale image of {a} {label}",
    "a low resolution photo of {a} {label}",
    "a small photo of {a} {label}",
    "a product photo of {a} {label}",
    "this is {a} {label}",
    "an image of {a} {label}",
)
FASHION_VAL_SIZE = 5000
FASHION_VAL_SEED = 0


def read_idx_gz(path: str | Path) -> np.ndarray:
    """A gzip-compressed IDX file (the MNIST format) as a uint8 array of its declared shape."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {shape} values, found {arr.size}")
    return arr.reshape(shape)


def load_fashion_mnist(part: str, root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` and labels ``[N]`` of the official ``"train"`` or ``"t10k"`` part."""
    images = read_idx_gz(root / f"{part}-images-idx3-ubyte.gz")
    labels = read_idx_gz(root / f"{part}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels in {part}")
    return images, labels


def fashion_mnist_indices(split: str, n_train: int = 60000, n_test: int = 10000) -> np.ndarray:
    """Official-file indices of a split, in a fixed order whose prefixes are the limited subsets.

    val is a fixed random 5 000 of the official train set, train the other 55 000 (both in that
    permutation's order, so a limit takes a random subset); test is the official test set in file order.
    """
    if split == "test":
        return np.arange(n_test)
    perm = np.random.default_rng(FASHION_VAL_SEED).permutation(n_train)
    if split == "val":
        return perm[:FASHION_VAL_SIZE]
    if split == "train":
        return perm[FASHION_VAL_SIZE:]
    raise ValueError(f"unknown split {split!r}")


def fashion_caption(label: str, index: int) -> str:
    """The caption of official image ``index``: the template is picked by a hash of the index, so every
    class gets every wording and the choice never changes."""
    pick = int.from_bytes(hash_order(f"fashion:{index}")[:4], "big")
    template = FASHION_CAPTION_TEMPLATES[pick % len(FASHION_CAPTION_TEMPLATES)]
    return template.format(a=article(label), label=label)


def write_fashion_mnist(
    out_dir: Path, *, root: Path = FASHION_MNIST_DIR, limits: Limits | None = None, progress: bool = True
) -> dict[str, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classes.json").write_text(
        json.dumps([{"name": n, "label": h} for n, h in FASHION_CLASSES], indent=1) + "\n", encoding="utf-8"
    )
    parts = {"train": load_fashion_mnist("train", root), "test": load_fashion_mnist("t10k", root)}
    counts: dict[str, int] = {}
    for split in SPLITS:
        images, labels = parts["test" if split == "test" else "train"]
        idx = fashion_mnist_indices(split, n_train=len(parts["train"][0]), n_test=len(parts["test"][0]))
        lim = split_limit(limits, split)
        chosen = np.sort(idx[:lim] if lim is not None else idx)
        split_dir = out_dir / split
        for name, _ in FASHION_CLASSES:
            (split_dir / "images" / name).mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        with progress_bar(len(chosen), f"fashion_mnist/{split}", progress) as bar:
            for i in chosen.tolist():
                name, label = FASHION_CLASSES[int(labels[i])]
                rel = f"images/{name}/{i:05d}.png"
                Image.fromarray(images[i], mode="L").save(split_dir / rel)
                rows.append({"image": rel, "text": fashion_caption(label, i), "label": name})
                bar.update()
        counts[split] = write_jsonl(split_dir / "pairs.jsonl", rows)
    return counts

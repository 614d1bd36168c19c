"""Where the bundled sources live under the data folder (default ``data/``, or ``$MOMO_DATA_DIR``), as
`momo data prepare` (:mod:`training.data.prepare`) writes them; trainers and evaluators find files
through :func:`source_paths` rather than hard-coding paths::

    fashion_mnist/classes.json                 [{"name": "tshirt_top", "label": "t-shirt"}, ...]
    fashion_mnist/<split>/images/<class>/<n>.png   image folder, 28×28 grayscale; <n> = official index
    fashion_mnist/<split>/pairs.jsonl          one templated caption per image
    shapes/answers.json                        the closed VQA answer vocabulary
    shapes/<split>/images/<n>.png              64×64 RGB scenes
    shapes/<split>/pairs.jsonl                 one line per scene, one caption chosen deterministically
    shapes/<split>/vqa.jsonl                   every question of every scene, with its "type"
    shapes/<split>/scenes.jsonl                objects (colour, shape, size, x, y, radius) + all captions
    emoji/<split>/images/<codepoints>.png      64×64 RGB on white
    emoji/<split>/pairs.jsonl                  one line per emoji, caption from its Unicode name
    wordnet/<split>.jsonl, wordnet/labels.json     gloss -> noun lexicographer file (26 classes)
    fortunes/<split>.jsonl, fortunes/labels.json   fortune text -> fortune file name
    gcide/<split>.jsonl                        headword -> definition pairs
    clipart/classes.json, clipart/<split>/images/<class>/<n>.png, clipart/<split>/pairs.jsonl
    text/<split>.txt                           the text corpus, one document per line

Each source is written by its module: :mod:`~training.data.fashion_mnist`,
:mod:`~training.data.shapes_generation`, :mod:`~training.data.emoji`, :mod:`~training.data.text_sources`
(WordNet, fortunes, the corpus), :mod:`~training.data.gcide` and :mod:`~training.data.clipart`.
Splits: Fashion-MNIST uses official train minus a fixed 5 000 for val, and the official test set; shapes
uses a different seed per split; the others use a stable hash of a key (80/10/10), so a record never
changes split when limits or other records change.
"""

from __future__ import annotations

import os
from pathlib import Path

from training.data.source_writing import SPLITS

DEFAULT_DATA_DIR = Path(os.environ.get("MOMO_DATA_DIR", "data"))

SOURCES: tuple[str, ...] = (
    "fashion_mnist",
    "shapes",
    "emoji",
    "wordnet",
    "fortunes",
    "gcide",
    "clipart",
    "text",
)
IMAGE_SOURCES = frozenset({"fashion_mnist", "shapes", "emoji", "clipart"})
TEXT_SPLITS = ("train", "val", "test")


def source_paths(data_dir: str | Path = DEFAULT_DATA_DIR) -> dict[str, dict[str, dict[str, Path]]]:
    """``{source: {split: {kind: path}}}`` for every file trainers and evaluators read.

    Kinds: ``image_folder`` (folder of class sub-folders), ``pairs`` / ``vqa`` / ``scenes`` (JSONL),
    ``labeled_text`` / ``text_pairs`` (JSONL), ``text`` (one document per line), ``images`` (a folder
    of images) and ``classes`` / ``answers`` / ``labels`` (JSON label vocabularies, repeated in every
    split for convenience). The paths exist once :func:`training.data.prepare.prepare_all` has run.
    """
    root = Path(data_dir)
    fm, sh, em, wn, fo = (root / s for s in ("fashion_mnist", "shapes", "emoji", "wordnet", "fortunes"))
    text = root / "text"
    return {
        "fashion_mnist": {
            s: {
                "image_folder": fm / s / "images",
                "pairs": fm / s / "pairs.jsonl",
                "classes": fm / "classes.json",
            }
            for s in SPLITS
        },
        "shapes": {
            s: {
                "images": sh / s / "images",
                "pairs": sh / s / "pairs.jsonl",
                "vqa": sh / s / "vqa.jsonl",
                "scenes": sh / s / "scenes.jsonl",
                "answers": sh / "answers.json",
            }
            for s in SPLITS
        },
        "emoji": {s: {"images": em / s / "images", "pairs": em / s / "pairs.jsonl"} for s in SPLITS},
        "wordnet": {s: {"labeled_text": wn / f"{s}.jsonl", "labels": wn / "labels.json"} for s in SPLITS},
        "fortunes": {s: {"labeled_text": fo / f"{s}.jsonl", "labels": fo / "labels.json"} for s in SPLITS},
        "gcide": {s: {"text_pairs": root / "gcide" / f"{s}.jsonl"} for s in SPLITS},
        "clipart": {
            s: {
                "image_folder": root / "clipart" / s / "images",
                "pairs": root / "clipart" / s / "pairs.jsonl",
                "classes": root / "clipart" / "classes.json",
            }
            for s in SPLITS
        },
        "text": {s: {"text": text / f"{s}.txt"} for s in TEXT_SPLITS},
    }


def split_location(data_dir: str | Path, source: str, split: str) -> Path:
    """The folder (image sources) or file (text sources) holding one split of a source."""
    root = Path(data_dir) / source
    if source in IMAGE_SOURCES:
        return root / split
    return root / (f"{split}.txt" if source == "text" else f"{split}.jsonl")

"""Open Clip Art Library drawings (Debian ``openclipart-png``): real image–text pairs.

The package files drawings as ``/usr/share/openclipart/png/<category>[/<sub>...]/<title>.png`` with
descriptive file names (``chemistry_flask_matthew__01.png``). A drawing's caption comes from its title
and folder path, and its top-level category is a 15-way classification task (zero-shot and probe).

Layout written by :func:`write_clipart`::

    clipart/classes.json                    [{"name": "signs_and_symbols", "label": "signs and symbols"}, ...]
    clipart/<split>/images/<class>/<n>.png  64×64 RGB on white (transparency flattened)
    clipart/<split>/pairs.jsonl             {"image", "text", "label"} per drawing

Categories with fewer than :data:`CLIPART_MIN_CLASS_SIZE` drawings, the catch-all folders
(``unsorted``, ``special``) and drawings above :data:`CLIPART_MAX_PIXELS` are left out. A drawing
filed under two categories keeps the first (sorted) one. The split is a stable hash of the file name
(80/10/10), so every category is in every split.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from training.data.formats import write_jsonl
from training.data.source_writing import SPLITS, hash_order, hash_split

CLIPART_DIR = Path("/usr/share/openclipart/png")
CLIPART_IMAGE_SIZE = 64
CLIPART_MIN_CLASS_SIZE = 40
CLIPART_EXCLUDED = frozenset({"unsorted", "special"})
# 20 of the 8 121 files are rasterised at 3 000-15 000 pixels a side and take seconds each to decode
# for a 64-pixel thumbnail: they are left out (their header is read, never the pixels)
CLIPART_MAX_PIXELS = 8_000_000
CLIPART_CAPTION_TEMPLATES: tuple[str, ...] = (
    "a clip art drawing of {title}, {path}",
    "clip art of {title} ({path})",
    "a drawing of {title}; category: {path}",
    "{title}, a {label} clip art",
)
# file-name tails that are no words: numbering, variant letters, truncated author names' underscores
_TAIL = re.compile(r"(?:_+(?:\d+|[a-z]|r|s))+$")
_NON_WORD = re.compile(r"[^0-9a-zA-Z]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


@dataclass(frozen=True)
class ClipArt:
    path: Path
    category: str  # top-level folder, e.g. "signs_and_symbols"
    subpath: tuple[str, ...]  # folders below it, e.g. ("astronomy",)
    title: str  # words of the file name

    @property
    def label(self) -> str:
        return self.category.replace("_", " ")


def title_words(stem: str) -> str:
    """``"chemistry_flask_matthew__01"`` -> ``"chemistry flask matthew"``; ``"DangerElectrique"`` ->
    ``"danger electrique"``."""
    stem = _TAIL.sub("", stem)
    return " ".join(_NON_WORD.sub(" ", _CAMEL.sub(" ", stem)).lower().split())


def _pixels(path: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:  # reads the header only
                return image.width * image.height
        except (OSError, Image.DecompressionBombError):
            return CLIPART_MAX_PIXELS + 1


def read_clipart(root: Path = CLIPART_DIR, min_class_size: int = CLIPART_MIN_CLASS_SIZE) -> list[ClipArt]:
    """Every usable drawing, sorted by category then path."""
    items: dict[str, ClipArt] = {}
    for path in sorted(root.rglob("*.png")):
        rel = path.relative_to(root)
        category, *folders = rel.parts[:-1]
        if category in CLIPART_EXCLUDED or path.name in items:
            continue
        title = title_words(path.stem)
        if title and _pixels(path) <= CLIPART_MAX_PIXELS:
            items[path.name] = ClipArt(path, category, tuple(folders), title)
    sizes: dict[str, int] = {}
    for item in items.values():
        sizes[item.category] = sizes.get(item.category, 0) + 1
    kept = [item for item in items.values() if sizes[item.category] >= min_class_size]
    return sorted(kept, key=lambda it: (it.category, str(it.path)))


def clipart_caption(item: ClipArt, pick: int) -> str:
    """The caption: the title, the folder path (most specific first) and the category words."""
    path = ", ".join([*(f.replace("_", " ") for f in reversed(item.subpath)), item.label])
    template = CLIPART_CAPTION_TEMPLATES[pick % len(CLIPART_CAPTION_TEMPLATES)]
    return template.format(title=item.title, path=path, label=item.label)


def render_clipart(path: Path, size: int = CLIPART_IMAGE_SIZE) -> Image.Image:
    """The drawing on white, fitted into ``size``×``size`` with its aspect ratio kept."""
    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    flat = canvas.convert("RGB")
    flat.thumbnail((size, size), Image.Resampling.LANCZOS)
    square = Image.new("RGB", (size, size), (255, 255, 255))
    square.paste(flat, ((size - flat.width) // 2, (size - flat.height) // 2))
    return square


def write_clipart(
    out_dir: Path,
    *,
    root: Path = CLIPART_DIR,
    limits: Mapping[str, int | None] | None = None,
    min_class_size: int = CLIPART_MIN_CLASS_SIZE,
    progress: bool = True,
) -> dict[str, int]:
    items = read_clipart(root, min_class_size)
    classes = sorted({it.category for it in items})
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [{"name": c, "label": c.replace("_", " ")} for c in classes]
    (out_dir / "classes.json").write_text(json.dumps(labels, indent=1) + "\n", encoding="utf-8")
    counts: dict[str, int] = {}
    for split in SPLITS:
        chosen = [it for it in items if hash_split(f"clipart:{it.path.name}") == split]
        limit = None if limits is None else limits.get(split)
        if limit is not None:
            keep = set(sorted(chosen, key=lambda it: hash_order(it.path.name))[:limit])
            chosen = [it for it in chosen if it in keep]
        rows: list[dict[str, Any]] = []
        for name in classes:
            (out_dir / split / "images" / name).mkdir(parents=True, exist_ok=True)
        for n, item in enumerate(tqdm(chosen, desc=f"clipart/{split}", disable=not progress, leave=False)):
            rel = f"images/{item.category}/{n:05d}.png"
            try:
                render_clipart(item.path).save(out_dir / split / rel)
            except OSError:
                continue  # an unreadable file in the package: skipped, never fatal
            pick = int.from_bytes(hash_order(f"clipart:{item.path.name}")[:4], "big")
            rows.append({"image": rel, "text": clipart_caption(item, pick), "label": item.category})
        counts[split] = write_jsonl(out_dir / split / "pairs.jsonl", rows)
    return counts

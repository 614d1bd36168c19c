"""The bundled data sources (DESIGN.md §4), each read from its Debian package and written in the
standard formats of :mod:`training.data.formats`.

Every ``write_*`` function writes one source into ``out_dir`` with fixed train/val/test splits and returns
``{split: count}``. Layout (see also :func:`training.data.prepare.source_paths`)::

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

Splits: Fashion-MNIST uses official train minus a fixed 5 000 for val, and the official test set; shapes
uses a different seed per split; emoji, WordNet and fortunes use a stable hash of a key (80/10/10), so a
record never changes split when limits or other records change.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import struct
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from training.data import gcide
from training.data import shapes as shapes_world
from training.data.formats import LabeledTextRecord, write_jsonl

SPLITS: tuple[str, ...] = ("train", "val", "test")
Limits = Mapping[str, int | None]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")


def hash_split(key: str) -> str:
    """Stable 80/10/10 split from a SHA-256 of ``key`` (Python's ``hash`` is salted per process)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


def _hash_order(key: str) -> bytes:
    # a stable pseudo-random order, used to take a limited but unbiased subset
    return hashlib.sha256(b"order:" + key.encode("utf-8")).digest()


def article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _limit(limits: Limits | None, split: str) -> int | None:
    return None if limits is None else limits.get(split)


def _bar(total: int | None, desc: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="item", disable=not progress, leave=False, dynamic_ncols=True)


# =========================================================================== Fashion-MNIST

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
    pick = int.from_bytes(_hash_order(f"fashion:{index}")[:4], "big")
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
        lim = _limit(limits, split)
        chosen = np.sort(idx[:lim] if lim is not None else idx)
        split_dir = out_dir / split
        for name, _ in FASHION_CLASSES:
            (split_dir / "images" / name).mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        with _bar(len(chosen), f"fashion_mnist/{split}", progress) as bar:
            for i in chosen.tolist():
                name, label = FASHION_CLASSES[int(labels[i])]
                rel = f"images/{name}/{i:05d}.png"
                Image.fromarray(images[i], mode="L").save(split_dir / rel)
                rows.append({"image": rel, "text": fashion_caption(label, i), "label": name})
                bar.update()
        counts[split] = write_jsonl(split_dir / "pairs.jsonl", rows)
    return counts


# =========================================================================== shapes world

SHAPES_SEEDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
SHAPES_DEFAULT_COUNTS: dict[str, int] = {"train": 20000, "val": 1000, "test": 1000}


def _caption_pick(scene: shapes_world.Scene) -> int:
    return int.from_bytes(_hash_order(f"{scene.seed}:{scene.index}")[:4], "big") % len(scene.captions)


def write_shapes(
    out_dir: Path,
    *,
    counts: Mapping[str, int] | None = None,
    seeds: Mapping[str, int] | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Scenes per split. ``pairs.jsonl`` has one line per scene with one of its captions (picked by the
    scene's seed and index, so it is stable); all caption variants are in ``scenes.jsonl``."""
    counts = dict(SHAPES_DEFAULT_COUNTS if counts is None else counts)
    seeds = dict(SHAPES_SEEDS if seeds is None else seeds)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "answers.json").write_text(json.dumps(list(shapes_world.ANSWERS)) + "\n", encoding="utf-8")
    written: dict[str, int] = {}
    for split in SPLITS:
        split_dir = out_dir / split
        (split_dir / "images").mkdir(parents=True, exist_ok=True)
        pairs: list[dict[str, Any]] = []
        vqa: list[dict[str, Any]] = []
        scenes: list[dict[str, Any]] = []
        with _bar(counts[split], f"shapes/{split}", progress) as bar:
            for scene in shapes_world.generate_scenes(seeds[split], counts[split]):
                rel = f"images/{scene.index:06d}.png"
                (split_dir / rel).write_bytes(shapes_world.scene_png(scene))
                pick = _caption_pick(scene)
                pairs.append(
                    {
                        "image": rel,
                        "text": scene.captions[pick],
                        "objects": [asdict(o) for o in scene.objects],
                        "claim": scene.claims[pick],
                    }
                )
                vqa.extend(
                    {"image": rel, "question": q.question, "answer": q.answer, "type": q.type}
                    for q in scene.questions
                )
                scenes.append({"image": rel, **scene.to_dict()})
                bar.update()
        written[split] = write_jsonl(split_dir / "pairs.jsonl", pairs)
        write_jsonl(split_dir / "vqa.jsonl", vqa)
        write_jsonl(split_dir / "scenes.jsonl", scenes)
    return written


# =========================================================================== emoji

EMOJI_RENDER_SIZE = 109  # the only size of the CBDT bitmap strikes in NotoColorEmoji
EMOJI_IMAGE_SIZE = 64
SKIN_TONES: dict[int, str] = {
    0x1F3FB: "light skin tone",
    0x1F3FC: "medium-light skin tone",
    0x1F3FD: "medium skin tone",
    0x1F3FE: "medium-dark skin tone",
    0x1F3FF: "dark skin tone",
}
KEYCAPS: dict[str, str] = {"#": "number sign", "*": "asterisk", **{str(d): str(d) for d in range(10)}}
# Unicode categories of pictographs; excludes letters, modifiers (Sk), marks, format characters
_EMOJI_CATEGORIES = frozenset({"So", "Sm", "Po", "Pd"})
EMOJI_CAPTION_TEMPLATES: tuple[str, ...] = (
    "an emoji of {a}{name}",
    "{name}",
    "{a}{name} emoji",
    "an icon of {a}{name}",
    "a picture of {a}{name}",
    "emoji: {name}",
)
_NO_ARTICLE_PREFIXES = ("two ", "three ", "four ", "keycap", "flag")


@dataclass(frozen=True)
class EmojiItem:
    sequence: str
    name: str  # CLDR style: "waving hand: medium skin tone"
    base: str  # the single-codepoint name, used as the split key so skin-tone variants share a split

    @property
    def file_stem(self) -> str:
        return "-".join(f"{ord(c):x}" for c in self.sequence)

    @property
    def caption_name(self) -> str:
        """The name as caption words: "waving hand, medium skin tone", "keycap 1"."""
        if self.name.endswith("skin tone"):
            return self.name.replace(": ", ", ")
        return self.name.replace(": ", " ")


def font_codepoints(font_path: Path) -> set[int]:
    """Codepoints mapped by a TrueType font's cmap (format 4 and 12 subtables)."""
    data = font_path.read_bytes()
    num_tables = struct.unpack(">H", data[4:6])[0]
    cmap = None
    for i in range(num_tables):
        tag, _, offset, _ = struct.unpack(">4sIII", data[12 + 16 * i : 28 + 16 * i])
        if tag == b"cmap":
            cmap = offset
    if cmap is None:
        raise ValueError(f"{font_path}: no cmap table")
    points: set[int] = set()
    n_sub = struct.unpack(">H", data[cmap + 2 : cmap + 4])[0]
    for i in range(n_sub):
        _, _, sub_off = struct.unpack(">HHI", data[cmap + 4 + 8 * i : cmap + 12 + 8 * i])
        sub = cmap + sub_off
        fmt = struct.unpack(">H", data[sub : sub + 2])[0]
        if fmt == 12:
            n_groups = struct.unpack(">I", data[sub + 12 : sub + 16])[0]
            for g in range(n_groups):
                start, end, _ = struct.unpack(">III", data[sub + 16 + 12 * g : sub + 28 + 12 * g])
                points.update(range(start, end + 1))
        elif fmt == 4:
            seg_x2 = struct.unpack(">H", data[sub + 6 : sub + 8])[0]
            ends = struct.unpack(f">{seg_x2 // 2}H", data[sub + 14 : sub + 14 + seg_x2])
            starts = struct.unpack(f">{seg_x2 // 2}H", data[sub + 16 + seg_x2 : sub + 16 + 2 * seg_x2])
            for s, e in zip(starts, ends, strict=True):
                if s != 0xFFFF:
                    points.update(range(s, e + 1))
    return points


def load_emoji_font(font_path: Path = EMOJI_FONT) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path), EMOJI_RENDER_SIZE)


def emoji_inventory(
    font_path: Path = EMOJI_FONT, font: ImageFont.FreeTypeFont | None = None
) -> list[EmojiItem]:
    """Single-codepoint emoji the font maps and Python's Unicode database names, plus two kinds of
    simple sequences: skin-tone variants (when the font ligates base + modifier into one glyph, which
    needs Pillow's raqm layout) and keycaps. Sorted by sequence."""
    font = font or load_emoji_font(font_path)
    points = font_codepoints(font_path)
    single_width = font.getlength("\U0001f600")
    items: list[EmojiItem] = []
    for cp in sorted(points):
        ch = chr(cp)
        if cp < 0xA0 or 0x1F1E6 <= cp <= 0x1F1FF or unicodedata.category(ch) not in _EMOJI_CATEGORIES:
            continue  # ASCII/keycap parts, regional-indicator letters (flags have no Unicode name)
        uname = unicodedata.name(ch, "")
        if not uname:
            continue  # newer than this Python's Unicode database: no name to caption it with
        name = uname.lower()
        items.append(EmojiItem(ch, name, name))
        if (
            0x1F3FB in points
            and unicodedata.category(ch) == "So"
            and font.getlength(ch + chr(0x1F3FB)) <= single_width * 1.2
        ):
            items.extend(EmojiItem(ch + chr(m), f"{name}: {tone}", name) for m, tone in SKIN_TONES.items())
    if 0x20E3 in points:
        for key, spoken in KEYCAPS.items():
            items.append(EmojiItem(f"{key}\ufe0f\u20e3", f"keycap: {spoken}", f"keycap: {spoken}"))
    return sorted(items, key=lambda it: it.sequence)


def render_emoji(
    font: ImageFont.FreeTypeFont, sequence: str, size: int = EMOJI_IMAGE_SIZE
) -> Image.Image | None:
    """The emoji on white, ``size``×``size`` RGB; ``None`` when the font draws nothing (no glyph)."""
    _, _, right, bottom = font.getbbox(sequence)
    # a margin around the layout box: some glyphs draw slightly outside it
    canvas = Image.new("RGBA", (max(int(right), 1) + 8, max(int(bottom), 1) + 8), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((0, 0), sequence, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def emoji_caption(item: EmojiItem) -> str:
    name = item.caption_name
    template = EMOJI_CAPTION_TEMPLATES[
        int.from_bytes(_hash_order(item.name)[:4], "big") % len(EMOJI_CAPTION_TEMPLATES)
    ]
    head = name.split(",")[0]
    # no article before counts, keycaps or (roughly detected) plurals: "two hearts", "wrestlers"
    plural = head.endswith("s") and not head.endswith(("ss", "us", "is"))
    a = "" if plural or name.startswith(_NO_ARTICLE_PREFIXES) else article(name) + " "
    return template.format(a=a, name=name)


def write_emoji(
    out_dir: Path, *, font_path: Path = EMOJI_FONT, limits: Limits | None = None, progress: bool = True
) -> dict[str, int]:
    font = load_emoji_font(font_path)
    by_split: dict[str, list[EmojiItem]] = {s: [] for s in SPLITS}
    for item in emoji_inventory(font_path, font):
        by_split[hash_split(item.base)].append(item)
    counts: dict[str, int] = {}
    for split in SPLITS:
        split_dir = out_dir / split
        (split_dir / "images").mkdir(parents=True, exist_ok=True)
        candidates = by_split[split]
        lim = _limit(limits, split)
        if lim is not None:  # a random subset that stays the same for the same limit
            candidates = sorted(candidates, key=lambda it: _hash_order(it.name))
        rows: list[dict[str, Any]] = []
        with _bar(lim if lim is not None else len(candidates), f"emoji/{split}", progress) as bar:
            for item in candidates:
                if lim is not None and len(rows) >= lim:
                    break
                image = render_emoji(font, item.sequence)
                if image is None:
                    continue
                rel = f"images/{item.file_stem}.png"
                image.save(split_dir / rel)
                rows.append({"image": rel, "text": emoji_caption(item), "name": item.name, "label": item.name})
                bar.update()
        rows.sort(key=lambda r: str(r["image"]))
        counts[split] = write_jsonl(split_dir / "pairs.jsonl", rows)
    return counts


# =========================================================================== WordNet

# lexicographer file numbers of nouns (WordNet's lexnames file); 26 categories
NOUN_LEXNAMES: dict[int, str] = {
    3: "noun.Tops",
    4: "noun.act",
    5: "noun.animal",
    6: "noun.artifact",
    7: "noun.attribute",
    8: "noun.body",
    9: "noun.cognition",
    10: "noun.communication",
    11: "noun.event",
    12: "noun.feeling",
    13: "noun.food",
    14: "noun.group",
    15: "noun.location",
    16: "noun.motive",
    17: "noun.object",
    18: "noun.person",
    19: "noun.phenomenon",
    20: "noun.plant",
    21: "noun.possession",
    22: "noun.process",
    23: "noun.quantity",
    24: "noun.relation",
    25: "noun.shape",
    26: "noun.state",
    27: "noun.substance",
    28: "noun.time",
}


@dataclass(frozen=True)
class WordNetSynset:
    offset: str
    lexname: str
    words: tuple[str, ...]
    gloss: str


def read_wordnet_nouns(path: Path = WORDNET_DIR / "data.noun") -> list[WordNetSynset]:
    """Noun synsets of a WordNet ``data.noun`` file (the licence header lines start with spaces)."""
    synsets: list[WordNetSynset] = []
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.startswith(" ") or not line.strip():
                continue
            head, sep, gloss = line.partition(" | ")
            fields = head.split()
            if not sep or len(fields) < 5:
                raise ValueError(f"{path}:{lineno}: not a WordNet data line")
            lex = int(fields[1])
            if lex not in NOUN_LEXNAMES:
                raise ValueError(f"{path}:{lineno}: lexicographer file {lex} is not a noun category")
            n_words = int(fields[3], 16)
            words = tuple(fields[4 + 2 * k].replace("_", " ") for k in range(n_words))
            synsets.append(WordNetSynset(fields[0], NOUN_LEXNAMES[lex], words, " ".join(gloss.split())))
    return synsets


def _write_labeled_splits(
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
        lim = _limit(limits, split)
        if lim is not None and len(rows) > lim:
            keep = {k for k, _ in sorted(rows, key=lambda kr: _hash_order(kr[0]))[:lim]}
            rows = [kr for kr in rows if kr[0] in keep]
        counts[split] = write_jsonl(out_dir / f"{split}.jsonl", (row for _, row in rows))
    return counts


def write_wordnet(
    out_dir: Path,
    *,
    path: Path = WORDNET_DIR / "data.noun",
    limits: Limits | None = None,
    progress: bool = True,
) -> dict[str, int]:
    synsets = read_wordnet_nouns(path)
    rows = (
        (s.offset, {"text": s.gloss, "label": s.lexname, "words": list(s.words), "id": s.offset})
        for s in tqdm(synsets, desc="wordnet", disable=not progress, leave=False)
    )
    return _write_labeled_splits(out_dir, rows, sorted(NOUN_LEXNAMES.values()), limits)


# =========================================================================== fortunes

FORTUNE_MAX_CHARS = 400
# categories left with fewer entries than this cannot appear in every split, so they are dropped
FORTUNE_MIN_CATEGORY_SIZE = 20
_FORTUNE_SEPARATOR = re.compile(r"^%\s*$", re.MULTILINE)


def read_fortunes(
    root: Path = FORTUNES_DIR,
    *,
    max_chars: int = FORTUNE_MAX_CHARS,
    min_category_size: int = FORTUNE_MIN_CATEGORY_SIZE,
) -> list[LabeledTextRecord]:
    """Fortune entries labelled with their file name, whitespace collapsed to single spaces.

    Skips sub-folders (the ``off/`` offensive set), ``.dat`` indexes and ``.u8`` copies; drops entries
    longer than ``max_chars``, texts filed under more than one category (their label is ambiguous),
    and categories with fewer than ``min_category_size`` remaining entries.
    """
    seen: dict[str, set[str]] = {}
    order: list[tuple[str, str]] = []
    for path in sorted(root.iterdir()):
        if not path.is_file() or path.suffix in {".dat", ".u8"} or path.name.startswith("."):
            continue
        raw = path.read_bytes()
        try:
            content = raw.decode("utf-8")
        except UnicodeDecodeError:  # a few historic fortune files are Latin-1
            content = raw.decode("latin-1")
        for entry in _FORTUNE_SEPARATOR.split(content):
            text = " ".join(entry.split())
            if not text or len(text) > max_chars:
                continue
            if text not in seen:
                seen[text] = set()
                order.append((text, path.name))
            seen[text].add(path.name)
    records = [LabeledTextRecord(text, cat) for text, cat in order if len(seen[text]) == 1]
    sizes: dict[str, int] = {}
    for r in records:
        sizes[r.label] = sizes.get(r.label, 0) + 1
    return [r for r in records if sizes[r.label] >= min_category_size]


def write_fortunes(
    out_dir: Path, *, root: Path = FORTUNES_DIR, limits: Limits | None = None, progress: bool = True
) -> dict[str, int]:
    records = read_fortunes(root)
    labels = sorted({r.label for r in records})
    rows = ((f"{r.label}\n{r.text}", {"text": r.text, "label": r.label}) for r in records)
    return _write_labeled_splits(out_dir, rows, labels, limits)


# =========================================================================== GCIDE


def write_gcide(
    out_dir: Path, *, root: Path = gcide.GCIDE_DIR, limits: Limits | None = None, progress: bool = True
) -> dict[str, int]:
    """``<split>.jsonl`` of ``{"query": headword, "text": definition}``; the split is a hash of the
    lower-cased headword, so every sense of a word is in one split."""
    definitions = gcide.read_gcide(root)
    rows = (
        (f"gcide:{d.word.lower()}\n{d.text}", {"query": d.word, "text": d.text})
        for d in tqdm(definitions, desc="gcide", disable=not progress, leave=False)
    )
    return _write_labeled_splits(out_dir, rows, [], limits, split_key=lambda key: key.split("\n", 1)[0])


# =========================================================================== text corpus


def write_text_corpus(
    out_dir: Path,
    parts: Mapping[str, Callable[[str], Iterable[str]]],
    splits: Iterable[str] = ("train", "val"),
) -> dict[str, int]:
    """``<split>.txt``: the union of ``parts[name](split)`` texts, one per line, deduplicated and in a
    fixed pseudo-random order (so streaming readers see sources interleaved)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for split in splits:
        lines: dict[str, None] = {}
        for produce in parts.values():
            for text in produce(split):
                line = " ".join(text.split())
                if line:
                    lines.setdefault(line, None)
        ordered = sorted(lines, key=_hash_order)
        (out_dir / f"{split}.txt").write_text("".join(f"{t}\n" for t in ordered), encoding="utf-8")
        counts[split] = len(ordered)
    return counts

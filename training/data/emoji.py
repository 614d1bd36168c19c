"""Emoji (Debian ``fonts-noto-color-emoji``) rendered with Pillow, captioned from their Unicode names:
real image–text pairs.

Layout written by :func:`write_emoji`::

    emoji/<split>/images/<codepoints>.png      64×64 RGB on white
    emoji/<split>/pairs.jsonl                  one line per emoji, caption from its Unicode name

The split is a stable hash of the base emoji's name, so skin-tone variants share their base's split.
"""

from __future__ import annotations

import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from training.data.formats import write_jsonl
from training.data.source_writing import (
    SPLITS,
    Limits,
    article,
    hash_order,
    hash_split,
    progress_bar,
    split_limit,
)

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
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
        int.from_bytes(hash_order(item.name)[:4], "big") % len(EMOJI_CAPTION_TEMPLATES)
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
        lim = split_limit(limits, split)
        if lim is not None:  # a random subset that stays the same for the same limit
            candidates = sorted(candidates, key=lambda it: hash_order(it.name))
        rows: list[dict[str, Any]] = []
        with progress_bar(lim if lim is not None else len(candidates), f"emoji/{split}", progress) as bar:
            for item in candidates:
                if lim is not None and len(rows) >= lim:
                    break
                image = render_emoji(font, item.sequence)
                if image is None:
                    continue
                rel = f"images/{item.file_stem}.png"
                image.save(split_dir / rel)
                rows.append(
                    {"image": rel, "text": emoji_caption(item), "name": item.name, "label": item.name}
                )
                bar.update()
        rows.sort(key=lambda r: str(r["image"]))
        counts[split] = write_jsonl(split_dir / "pairs.jsonl", rows)
    return counts

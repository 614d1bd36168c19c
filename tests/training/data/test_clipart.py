"""The clip-art reader: titles from file names, categories from folders, captions, the written split."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from training.data import clipart
from training.data.formats import read_pairs


def _drawing(path: Path, size: tuple[int, int] = (40, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", size, (200, 30, 30, 255)).save(path)


def test_title_words() -> None:
    assert clipart.title_words("chemistry_flask_matthew__01") == "chemistry flask matthew"
    assert clipart.title_words("DangerElectrique") == "danger electrique"
    assert clipart.title_words("8port_hub_ruairi_hann_r") == "8port hub ruairi hann"


def test_categories_captions_and_split(tmp_path: Path) -> None:
    root = tmp_path / "png"
    for i in range(6):
        _drawing(root / "animals" / "birds" / f"blue_bird_{i}_01.png")
        _drawing(root / "food" / f"apple_pie_{i}.png")
    _drawing(root / "unsorted" / "anything.png")  # a catch-all folder: left out
    _drawing(root / "tools" / "hammer.png")  # too small a category
    _drawing(root / "food" / "birds" / "blue_bird_0_01.png")  # same file in a second category
    items = clipart.read_clipart(root, min_class_size=3)
    assert {it.category for it in items} == {"animals", "food"}
    assert sum(it.category == "animals" for it in items) == 6
    bird = next(it for it in items if it.category == "animals")
    caption = clipart.clipart_caption(bird, pick=0)
    assert caption == f"a clip art drawing of {bird.title}, birds, animals"

    out = tmp_path / "out"
    counts = clipart.write_clipart(out, root=root, min_class_size=3, progress=False)
    assert sum(counts.values()) == 12
    classes = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in classes] == ["animals", "food"]
    for split in counts:
        for record in read_pairs(out / split / "pairs.jsonl"):
            with Image.open(record.image) as image:
                assert image.size == (clipart.CLIPART_IMAGE_SIZE, clipart.CLIPART_IMAGE_SIZE)
                assert image.mode == "RGB"
            assert record.category in {"animals", "food"}
            assert record.category is not None and record.category.split("_")[0] in record.text

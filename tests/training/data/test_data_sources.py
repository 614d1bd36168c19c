"""The bundled sources, read from the real Debian files with small limits."""

from __future__ import annotations

import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import emoji, fashion_mnist, shapes_generation, source_writing, text_sources
from training.data.formats import iter_jsonl, read_image_folder, read_labeled_text, read_pairs, read_vqa

needs_fashion = pytest.mark.skipif(
    not fashion_mnist.FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist missing"
)
needs_emoji = pytest.mark.skipif(not emoji.EMOJI_FONT.is_file(), reason="fonts-noto-color-emoji missing")
needs_wordnet = pytest.mark.skipif(not text_sources.WORDNET_DIR.is_dir(), reason="wordnet-base missing")
needs_fortunes = pytest.mark.skipif(not text_sources.FORTUNES_DIR.is_dir(), reason="fortunes missing")


def test_hash_split_is_stable_and_80_10_10() -> None:
    keys = [f"key-{i}" for i in range(5000)]
    first = [source_writing.hash_split(k) for k in keys]
    assert first == [source_writing.hash_split(k) for k in keys]
    frac = Counter(first)
    assert abs(frac["train"] / 5000 - 0.8) < 0.03
    assert abs(frac["val"] / 5000 - 0.1) < 0.02
    assert abs(frac["test"] / 5000 - 0.1) < 0.02


@needs_fashion
def test_fashion_mnist_split_indices() -> None:
    train, val, test = (fashion_mnist.fashion_mnist_indices(s) for s in ("train", "val", "test"))
    assert len(val) == 5000 and len(train) == 55000 and len(test) == 10000
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted([*train.tolist(), *val.tolist()]) == list(range(60000))
    # the same fixed val set every time
    assert (fashion_mnist.fashion_mnist_indices("val") == val).all()


@needs_fashion
def test_fashion_mnist_written_with_limit(tmp_path: Path) -> None:
    counts = fashion_mnist.write_fashion_mnist(
        tmp_path, limits={"train": 40, "val": 10, "test": 12}, progress=False
    )
    assert counts == {"train": 40, "val": 10, "test": 12}
    images, labels = fashion_mnist.load_fashion_mnist("t10k")
    assert (
        images.shape == (10000, 28, 28)
        and images.dtype == np.uint8
        and set(labels.tolist()) == set(range(10))
    )
    names = [n for n, _ in fashion_mnist.FASHION_CLASSES]
    for split, n in counts.items():
        records = read_image_folder(tmp_path / split / "images")
        assert len(records) == n
        assert {r.label for r in records} <= set(names)
        pairs = read_pairs(tmp_path / split / "pairs.jsonl")
        assert len(pairs) == n
        human = dict(fashion_mnist.FASHION_CLASSES)
        for p in pairs:
            folder = p.image.parent.name
            assert human[folder] in p.text
    # test images are the official ones, pixel for pixel, in the class folder of their label
    record = read_image_folder(tmp_path / "test" / "images")[0]
    index = int(record.path.stem)
    with Image.open(record.path) as img:
        assert img.mode == "L" and img.size == (28, 28)
        assert (np.asarray(img) == images[index]).all()
    assert record.label == names[int(labels[index])]
    assert fashion_mnist.fashion_caption("ankle boot", 3).endswith("an ankle boot")


@needs_emoji
def test_emoji_inventory_and_render() -> None:
    font = emoji.load_emoji_font()
    items = emoji.emoji_inventory(emoji.EMOJI_FONT, font)
    assert len(items) > 1000
    names = {it.name for it in items}
    assert "grinning face" in names and len(names) == len(items)
    assert all(it.name == it.name.lower() for it in items)
    grinning = next(it for it in items if it.name == "grinning face")
    assert grinning.sequence == "\U0001f600"
    assert unicodedata.name(grinning.sequence).lower() == "grinning face"
    for item in [grinning, *items[:: max(1, len(items) // 25)]]:
        img = emoji.render_emoji(font, item.sequence)
        assert img is not None and img.size == (64, 64) and img.mode == "RGB"
        arr = np.asarray(img)
        assert (arr < 200).any(), item  # not blank white
    assert emoji.render_emoji(font, "A") is None  # no glyph in the emoji font -> skipped
    caption = emoji.emoji_caption(grinning)
    assert "grinning face" in caption


@needs_emoji
def test_emoji_written(tmp_path: Path) -> None:
    counts = emoji.write_emoji(tmp_path, limits={"train": 8, "val": 3, "test": 3}, progress=False)
    assert counts == {"train": 8, "val": 3, "test": 3}
    inventory = {it.name: it for it in emoji.emoji_inventory()}
    for split in counts:
        pairs = read_pairs(tmp_path / split / "pairs.jsonl")
        rows = [obj for _, obj in iter_jsonl(tmp_path / split / "pairs.jsonl")]
        for pair, row in zip(pairs, rows, strict=True):
            item = inventory[row["name"]]
            assert pair.image.name == f"{item.file_stem}.png"
            assert (
                source_writing.hash_split(item.base) == split
            )  # skin-tone variants share their base's split
            with Image.open(pair.image) as img:
                assert img.size == (64, 64)


@needs_wordnet
def test_wordnet_nouns_have_26_categories() -> None:
    synsets = text_sources.read_wordnet_nouns()
    assert len(synsets) > 80000
    cats = Counter(s.lexname for s in synsets)
    assert len(cats) == 26 and set(cats) == set(text_sources.NOUN_LEXNAMES.values())
    by_offset = {s.offset: s for s in synsets}
    assert by_offset["00001740"].lexname == "noun.Tops" and by_offset["00001740"].words == ("entity",)
    dog = next(s for s in synsets if s.words[:1] == ("dog",) and s.lexname == "noun.animal")
    assert "domesticated" in dog.gloss
    assert all(s.gloss and "\n" not in s.gloss for s in synsets)


@needs_wordnet
def test_wordnet_written(tmp_path: Path) -> None:
    counts = text_sources.write_wordnet(
        tmp_path, limits={"train": 300, "val": 40, "test": 40}, progress=False
    )
    assert counts == {"train": 300, "val": 40, "test": 40}
    train = read_labeled_text(tmp_path / "train.jsonl")
    assert {r.label for r in train} <= set(text_sources.NOUN_LEXNAMES.values())
    assert len({r.label for r in train}) > 15  # a limited subset is still spread over the categories


@needs_fortunes
def test_fortunes_categories(tmp_path: Path) -> None:
    records = text_sources.read_fortunes()
    cats = Counter(r.label for r in records)
    assert {"computers", "riddles", "science", "wisdom"} <= set(cats)
    assert min(cats.values()) >= text_sources.FORTUNE_MIN_CATEGORY_SIZE
    for cat in cats:
        assert (text_sources.FORTUNES_DIR / cat).is_file() and not cat.endswith((".dat", ".u8"))
    assert all(0 < len(r.text) <= 400 and "\n" not in r.text and "  " not in r.text for r in records)
    texts = [r.text for r in records]
    assert len(texts) == len(set(texts))
    counts = text_sources.write_fortunes(
        tmp_path, limits={"train": 50, "val": 10, "test": 10}, progress=False
    )
    assert counts == {"train": 50, "val": 10, "test": 10}
    assert {r.label for r in read_labeled_text(tmp_path / "val.jsonl")} <= set(cats)


def test_fortune_file_parsing(tmp_path: Path) -> None:
    cookie = "\n".join(["Short   one\nwith lines.", "%", "", "%", "x" * 401, "%", "Dup", "%", "Only here."])
    (tmp_path / "alpha").write_text(cookie)
    (tmp_path / "beta").write_text("Dup\n%\nBeta text\n")
    (tmp_path / "alpha.dat").write_bytes(b"\x00\x01")
    (tmp_path / "alpha.u8").write_text("ignored\n%\n")
    (tmp_path / "off").mkdir()
    (tmp_path / "off" / "rude").write_text("nope\n%\n")
    records = text_sources.read_fortunes(tmp_path, min_category_size=1)
    assert [(r.label, r.text) for r in records] == [
        ("alpha", "Short one with lines."),
        ("alpha", "Only here."),
        ("beta", "Beta text"),
    ]


def test_shapes_written(tmp_path: Path) -> None:
    counts = shapes_generation.write_shapes(
        tmp_path, counts={"train": 12, "val": 4, "test": 4}, progress=False
    )
    assert counts == {"train": 12, "val": 4, "test": 4}
    train_pairs = read_pairs(tmp_path / "train" / "pairs.jsonl")
    val_pairs = read_pairs(tmp_path / "val" / "pairs.jsonl")
    assert len(train_pairs) == 12
    assert train_pairs[0].image.read_bytes() != val_pairs[0].image.read_bytes()  # splits use different seeds
    vqa = read_vqa(tmp_path / "train" / "vqa.jsonl")
    assert len(vqa) >= 12 * 4 and {q.type for q in vqa} <= {"color", "shape", "count", "exist", "relation"}
    with Image.open(train_pairs[0].image) as img:
        assert img.size == (64, 64) and img.mode == "RGB"

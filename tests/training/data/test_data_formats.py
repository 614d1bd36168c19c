"""Readers and writers of training.data.formats on small fixtures written in tmp_path."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from training.data.formats import (
    DataFormatError,
    ImageRecord,
    image_folder_labels,
    read_image_folder,
    read_labeled_text,
    read_pairs,
    read_text_lines,
    read_vqa,
    write_jsonl,
)


def _png(path: Path, color: tuple[int, int, int] = (255, 0, 0), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def _png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------ image folder


def test_image_folder_sorted_with_labels(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _png(root / "zebra" / "b.png")
    _png(root / "zebra" / "a.jpg")
    _png(root / "ant" / "x.png")
    _png(root / "ant" / "nested" / "y.png")
    (root / "ant" / "notes.txt").write_text("not an image")
    _png(root / ".hidden" / "h.png")
    _png(root / "ant" / ".cache" / "c.png")
    records = read_image_folder(root)
    assert records == [
        ImageRecord(root / "ant" / "nested" / "y.png", "ant"),
        ImageRecord(root / "ant" / "x.png", "ant"),
        ImageRecord(root / "zebra" / "a.jpg", "zebra"),
        ImageRecord(root / "zebra" / "b.png", "zebra"),
    ]
    assert image_folder_labels(records) == ["ant", "zebra"]


def test_image_folder_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_image_folder(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="no images"):
        read_image_folder(tmp_path / "empty")


# ------------------------------------------------------------------------------------ JSONL


def test_pairs_relative_absolute_and_blank_lines(tmp_path: Path) -> None:
    _png(tmp_path / "d" / "images" / "a.png")
    absolute = _png(tmp_path / "elsewhere" / "b.png")
    path = tmp_path / "d" / "pairs.jsonl"
    path.write_text(
        json.dumps({"image": "images/a.png", "text": "a red square"})
        + "\n\n   \n"
        + json.dumps({"image": str(absolute), "text": "another", "extra": 1})
        + "\n"
    )
    records = read_pairs(path)
    assert [r.text for r in records] == ["a red square", "another"]
    assert records[0].image == tmp_path / "d" / "images" / "a.png"
    assert records[1].image == absolute


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"image": "a.png", "text": ', "invalid JSON"),
        ('["a.png", "text"]', "expected a JSON object"),
        ('{"image": "a.png"}', "missing key 'text'"),
        ('{"text": "hello"}', "missing key 'image'"),
        ('{"image": "a.png", "text": 3}', "'text' must be a string"),
        ('{"image": "a.png", "text": "  "}', "'text' is empty"),
        ('{"image": "missing.png", "text": "hi"}', "image file 'missing.png' not found"),
    ],
)
def test_pairs_malformed_line_names_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    _png(tmp_path / "a.png")
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"image": "a.png", "text": "fine"})
    path.write_text(f"{good}\n\n{good}\n{line}\n{good}\n")
    with pytest.raises(DataFormatError) as info:
        read_pairs(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert f"{path}:4:" in message  # 1-based, blank lines counted
    assert problem in message


def test_pairs_can_skip_image_check(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    write_jsonl(path, [{"image": "later.png", "text": "t"}])
    assert read_pairs(path, check_images=False)[0].image == tmp_path / "later.png"


def test_vqa_records_and_errors(tmp_path: Path) -> None:
    _png(tmp_path / "s.png")
    path = tmp_path / "vqa.jsonl"
    write_jsonl(
        path,
        [
            {"image": "s.png", "question": "what color is it?", "answer": "red", "type": "color"},
            {"image": "s.png", "question": "is it big?", "answer": "no"},
        ],
    )
    records = read_vqa(path)
    assert [(r.question, r.answer, r.type) for r in records] == [
        ("what color is it?", "red", "color"),
        ("is it big?", "no", None),
    ]
    path.write_text(json.dumps({"image": "s.png", "question": "q?", "answer": "a", "type": 5}) + "\n")
    with pytest.raises(DataFormatError, match=r"vqa\.jsonl:1: 'type' must be a string"):
        read_vqa(path)
    path.write_text(json.dumps({"image": "s.png", "question": "q?"}) + "\n")
    with pytest.raises(DataFormatError, match=r"vqa\.jsonl:1: missing key 'answer'"):
        read_vqa(path)


def test_labeled_text(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [{"text": "a dog", "label": "noun.animal"}, {"text": "x", "label": 3}])
    assert [(r.text, r.label) for r in read_labeled_text(path)] == [("a dog", "noun.animal"), ("x", "3")]
    for bad, problem in [
        ({"text": "x"}, "missing key 'label'"),
        ({"text": "x", "label": True}, "'label' must be"),
        ({"text": "x", "label": [1]}, "'label' must be"),
        ({"label": "a"}, "missing key 'text'"),
    ]:
        path.write_text("\n" + json.dumps(bad) + "\n")
        with pytest.raises(DataFormatError, match=rf"t\.jsonl:2: {problem}"):
            read_labeled_text(path)


def test_text_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("first doc\n\n  second doc  \n\t\nthird é\n", encoding="utf-8")
    assert read_text_lines(path) == ["first doc", "second doc", "third é"]


def test_write_jsonl_keeps_unicode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.jsonl"
    assert write_jsonl(path, [{"text": "café 😀", "label": "a"}]) == 1
    assert "café 😀" in path.read_text(encoding="utf-8")

"""Making the shapes world: scenes generated from ``(seed, index)``, drawn as images, and written as
the bundled ``shapes`` source.

Every scene is a pure function of ``(seed, index)`` (see :mod:`training.data.shapes`), so held-out
splits only need different seeds. Images are 64×64 RGB, drawn at 4× and downsampled so edges are
anti-aliased. Layout written by :func:`write_shapes`::

    shapes/answers.json                        the closed VQA answer vocabulary
    shapes/<split>/images/<n>.png              64×64 RGB scenes
    shapes/<split>/pairs.jsonl                 one line per scene, one caption chosen deterministically
    shapes/<split>/vqa.jsonl                   every question of every scene, with its "type"
    shapes/<split>/scenes.jsonl                objects (colour, shape, size, x, y, radius) + all captions
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from training.data.formats import write_jsonl
from training.data.shapes import (
    ANSWERS,
    BACKGROUNDS,
    COLORS,
    IMAGE_SIZE,
    MAX_OBJECTS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    overlaps,
)
from training.data.shapes_language import scene_captions, scene_questions
from training.data.source_writing import SPLITS, hash_order, progress_bar

SUPERSAMPLE = 4
SHAPES_SEEDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
SHAPES_DEFAULT_COUNTS: dict[str, int] = {"train": 20000, "val": 1000, "test": 1000}


def _rng(seed: int, index: int) -> random.Random:
    return random.Random(f"shapes:{seed}:{index}")


def _place_objects(rng: random.Random, n: int) -> list[ShapeObject]:
    while True:  # restart the whole layout in the rare case the canvas gets too crowded
        objects: list[ShapeObject] = []
        for _ in range(n):
            color = rng.choice(list(COLORS))
            shape = rng.choice(SHAPES)
            size = rng.choice(list(SIZES))
            r = SIZES[size]
            for _attempt in range(100):
                # keep the whole bounding box (inclusive pixels) inside the canvas with a 1-pixel border
                x = rng.randint(r + 1, IMAGE_SIZE - 2 - r)
                y = rng.randint(r + 1, IMAGE_SIZE - 2 - r)
                cand = ShapeObject(color, shape, size, x, y, r)
                if not any(overlaps(cand, o) for o in objects):
                    objects.append(cand)
                    break
            else:
                break
        if len(objects) == n:
            return objects


def generate_scene(seed: int, index: int) -> Scene:
    """Scene ``index`` of the stream with ``seed`` (objects, captions and questions)."""
    rng = _rng(seed, index)
    background = rng.choice(list(BACKGROUNDS))
    objects = _place_objects(rng, rng.randint(1, MAX_OBJECTS))
    captioned = scene_captions(rng, objects)
    questions = scene_questions(rng, objects)
    return Scene(
        seed=seed,
        index=index,
        background=background,
        objects=objects,
        captions=[text for text, _ in captioned],
        questions=questions,
        claims=[claim for _, claim in captioned],
    )


def generate_scenes(seed: int, count: int, start: int = 0) -> Iterator[Scene]:
    for index in range(start, start + count):
        yield generate_scene(seed, index)


def render_scene(scene: Scene) -> Image.Image:
    """The scene as a 64×64 RGB image (drawn at 4× then box-downsampled for anti-aliased edges)."""
    s = SUPERSAMPLE
    big = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(big)
    for o in scene.objects:
        # pixel box [x - r, x + r] inclusive -> supersampled [s(x - r), s(x + r + 1) - 1]
        x0, y0 = s * (o.x - o.radius), s * (o.y - o.radius)
        x1, y1 = s * (o.x + o.radius + 1) - 1, s * (o.y + o.radius + 1) - 1
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:  # upward-pointing triangle filling the bounding box
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def scene_png(scene: Scene) -> bytes:
    """PNG bytes of :func:`render_scene` (deterministic for a given Pillow/zlib)."""
    buf = io.BytesIO()
    render_scene(scene).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------------- the bundled source


def _caption_pick(scene: Scene) -> int:
    return int.from_bytes(hash_order(f"{scene.seed}:{scene.index}")[:4], "big") % len(scene.captions)


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
    (out_dir / "answers.json").write_text(json.dumps(list(ANSWERS)) + "\n", encoding="utf-8")
    written: dict[str, int] = {}
    for split in SPLITS:
        split_dir = out_dir / split
        (split_dir / "images").mkdir(parents=True, exist_ok=True)
        pairs: list[dict[str, Any]] = []
        vqa: list[dict[str, Any]] = []
        scenes: list[dict[str, Any]] = []
        with progress_bar(counts[split], f"shapes/{split}", progress) as bar:
            for scene in generate_scenes(seeds[split], counts[split]):
                rel = f"images/{scene.index:06d}.png"
                (split_dir / rel).write_bytes(scene_png(scene))
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

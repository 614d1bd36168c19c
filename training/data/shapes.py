"""The "shapes world": deterministic synthetic scenes with captions and question/answer pairs.

This module is the world itself: its vocabulary, objects, scenes, geometry and what a caption's claim
means (:func:`caption_true_of`). Scenes are made and drawn by :mod:`training.data.shapes_generation`,
their captions and questions worded by :mod:`training.data.shapes_language`.

A scene holds 1–4 non-overlapping objects on a plain neutral background. Each object is a colour
(:data:`COLORS`) × shape (:data:`SHAPES`) × size (:data:`SIZES`) at an integer centre. Images are
64×64 RGB, drawn at 4× and downsampled so edges are anti-aliased.

Every scene is a pure function of ``(seed, index)``: the random generator is seeded from the string
``"shapes:<seed>:<index>"`` (Python seeds ``random.Random`` from a string through SHA-512, so this is
stable across processes and platforms). Held-out splits therefore only need different seeds.

Truthfulness rules (the tests recompute every caption and answer from the objects):

* *Relations* use object centres. "A is left of B" is stated only when ``B.x - A.x >= MARGIN``;
  "A is above B" only when ``B.y - A.y >= MARGIN`` (image y grows downwards). Pairs closer than
  ``MARGIN`` on an axis are never described on that axis.
* *Referring expressions* ("the circle", "the red square", "the small circle", ...) are only used when
  they pick out exactly one object, so colour/shape answers are never ambiguous.
* "What shape is left of the X?" is only asked when exactly one object is clearly left of X and every
  other object is clearly right of it.
* Objects never overlap: for every pair, the Chebyshev distance between centres is at least
  ``r_a + r_b + GAP`` (their bounding boxes are separated on at least one axis).

Answers come from the closed vocabulary :data:`ANSWERS` (colours, shapes, "1"–"4", "yes"/"no") because a
VQA head classifies over them. Existence questions come in one "yes" and one "no" per scene, so they are
balanced exactly; yes/no relation questions are true or false with probability 1/2.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import permutations
from typing import Any

IMAGE_SIZE = 64
# minimum centre offset (pixels) along an axis before a left/right/above/below relation is stated
MARGIN = 8
# minimum distance (pixels) between the bounding boxes' edges of two objects, along at least one axis
GAP = 3

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 170, 60),
    "blue": (37, 90, 230),
    "yellow": (240, 210, 30),
    "purple": (140, 60, 190),
    "orange": (250, 135, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# size name -> radius (half the side of the bounding box) in pixels
SIZES: dict[str, int] = {"small": 6, "large": 11}
# neutral backgrounds only, so a background is never mistaken for an object colour
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "light gray": (205, 205, 205),
    "gray": (128, 128, 128),
    "dark gray": (40, 40, 40),
}
MAX_OBJECTS = 4
ANSWERS: tuple[str, ...] = (*COLORS, *SHAPES, "1", "2", "3", "4", "yes", "no")
QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count", "exist", "relation")

# relation word -> (axis, sign): "left" means other.x - self.x >= MARGIN, i.e. sign * (b - a) on the axis
RELATIONS: dict[str, tuple[str, int]] = {
    "left": ("x", 1),
    "right": ("x", -1),
    "above": ("y", 1),
    "below": ("y", -1),
}
OPPOSITE: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}


@dataclass(frozen=True)
class ShapeObject:
    color: str
    shape: str
    size: str
    x: int
    y: int
    radius: int

    def bbox(self) -> tuple[int, int, int, int]:
        return (self.x - self.radius, self.y - self.radius, self.x + self.radius, self.y + self.radius)


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    type: str


Claim = dict[str, Any]
"""What one caption asserts, in a form :func:`caption_true_of` checks against any scene's objects::

    {"kind": "objects", "objects": [[size|None, color, shape], ...]}   exactly these objects
    {"kind": "colors", "counts": {color: n}}                            the colour counts, all objects
    {"kind": "shapes", "counts": {shape: n}}                            the shape counts, all objects
    {"kind": "relation", "count": n, "a": [...], "rel": "left", "b": [...]}  n objects, a <rel> b

A size of None means the caption did not say. The order of a "from left to right" listing is not part
of its claim, so such a caption is judged true of a scene with the same objects in any order: a caption
is only ever called false when it is.
"""


@dataclass
class Scene:
    seed: int
    index: int
    background: str
    objects: list[ShapeObject]
    captions: list[str] = field(default_factory=list)
    questions: list[QA] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)  # what captions[i] asserts (see `Claim`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        return cls(
            seed=int(d["seed"]),
            index=int(d["index"]),
            background=str(d["background"]),
            objects=[ShapeObject(**o) for o in d["objects"]],
            captions=list(d.get("captions", [])),
            questions=[QA(**q) for q in d.get("questions", [])],
            claims=list(d.get("claims", [])),
        )


# ----------------------------------------------------------------------------------- geometry


def relation_holds(a: ShapeObject, b: ShapeObject, rel: str) -> bool:
    """True when "a is <rel> b" holds with the clear margin (e.g. rel="left": a.x + MARGIN <= b.x)."""
    axis, sign = RELATIONS[rel]
    delta = (b.x - a.x) if axis == "x" else (b.y - a.y)
    return sign * delta >= MARGIN


def is_clear(a: ShapeObject, b: ShapeObject, axis: str) -> bool:
    """Whether the two centres are at least MARGIN apart on ``axis`` (so a relation can be stated)."""
    delta = (b.x - a.x) if axis == "x" else (b.y - a.y)
    return abs(delta) >= MARGIN


def overlaps(a: ShapeObject, b: ShapeObject) -> bool:
    return max(abs(a.x - b.x), abs(a.y - b.y)) < a.radius + b.radius + GAP


# ----------------------------------------------------------------------------------- claims


def _matches(description: Sequence[str | None], obj: ShapeObject) -> bool:
    size, color, shape = description
    return (size is None or size == obj.size) and color == obj.color and shape == obj.shape


def caption_true_of(claim: Claim, objects: Sequence[ShapeObject]) -> bool:
    """Whether a caption with this claim is true of a scene with these objects."""
    kind = claim["kind"]
    if kind == "objects":
        wanted = claim["objects"]
        return len(wanted) == len(objects) and any(
            all(_matches(d, o) for d, o in zip(wanted, order, strict=True)) for order in permutations(objects)
        )
    if kind == "colors":
        return dict(Counter(o.color for o in objects)) == claim["counts"]
    if kind == "shapes":
        return dict(Counter(o.shape for o in objects)) == claim["counts"]
    if kind == "relation":
        return len(objects) == claim["count"] and any(
            _matches(claim["a"], a) and _matches(claim["b"], b) and relation_holds(a, b, claim["rel"])
            for a, b in permutations(objects, 2)
        )
    raise ValueError(f"unknown claim kind {kind!r}")

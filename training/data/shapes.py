"""The "shapes world": deterministic synthetic scenes with captions and question/answer pairs.

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

import io
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from collections import Counter
from itertools import combinations, pairwise, permutations
from typing import Any

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4
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
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
ANSWERS: tuple[str, ...] = (*COLORS, *SHAPES, "1", "2", "3", "4", "yes", "no")
QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count", "exist", "relation")
PLURAL_SHAPES: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles"}

# relation word -> (axis, sign): "left" means other.x - self.x >= MARGIN, i.e. sign * (b - a) on the axis
RELATIONS: dict[str, tuple[str, int]] = {
    "left": ("x", 1),
    "right": ("x", -1),
    "above": ("y", 1),
    "below": ("y", -1),
}
CAPTION_RELATION_PHRASES: dict[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
QUESTION_RELATION_PHRASES: dict[str, str] = {
    "left": "left of",
    "right": "right of",
    "above": "above",
    "below": "below",
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


# ----------------------------------------------------------------------------------- language


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(obj: ShapeObject, *, with_size: bool, with_article: bool = True) -> str:
    words = ([obj.size] if with_size else []) + [obj.color, obj.shape]
    phrase = " ".join(words)
    return f"{article(phrase)} {phrase}" if with_article else phrase


def join_list(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def count_phrase(n: int, noun: str, plural: str) -> str:
    """Count phrase: "a red shape" / "two red shapes"."""
    if n == 1:
        return f"{article(noun)} {noun}"
    return f"{NUMBER_WORDS[n]} {plural}"


# referring-expression attribute sets, most concise first
_REF_WITH_ALL: tuple[tuple[str, ...], ...] = (
    ("shape",),
    ("color", "shape"),
    ("size", "shape"),
    ("size", "color", "shape"),
)
_REF_NO_COLOR: tuple[tuple[str, ...], ...] = (("shape",), ("size", "shape"))
_REF_NO_SHAPE: tuple[tuple[str, ...], ...] = (("color",), ("size", "color"))


def _unique_ref(objects: Sequence[ShapeObject], i: int, options: Sequence[tuple[str, ...]]) -> str | None:
    """The most concise attribute description that matches only ``objects[i]``, e.g. "red circle"."""
    target = objects[i]
    for attrs in options:
        matches = [o for o in objects if all(getattr(o, a) == getattr(target, a) for a in attrs)]
        if len(matches) == 1:
            # attribute order in English: size, colour, shape
            return " ".join(getattr(target, a) for a in ("size", "color", "shape") if a in attrs)
    return None


# ----------------------------------------------------------------------------------- generation


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


def _description(obj: ShapeObject, with_size: bool) -> list[str | None]:
    return [obj.size if with_size else None, obj.color, obj.shape]


def _matches(description: Sequence[str | None], obj: ShapeObject) -> bool:
    size, color, shape = description
    return (size is None or size == obj.size) and color == obj.color and shape == obj.shape


def caption_true_of(claim: Claim, objects: Sequence[ShapeObject]) -> bool:
    """Whether a caption with this claim is true of a scene with these objects."""
    kind = claim["kind"]
    if kind == "objects":
        wanted = claim["objects"]
        return len(wanted) == len(objects) and any(
            all(_matches(d, o) for d, o in zip(wanted, order, strict=True))
            for order in permutations(objects)
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


def _captions(rng: random.Random, objects: list[ShapeObject]) -> list[tuple[str, Claim]]:
    """Every caption of a scene with its claim (the random draws are those of the v1 data)."""
    n = len(objects)

    def listing(order: Sequence[ShapeObject]) -> tuple[str, Claim]:
        sized = [(o, rng.random() < 0.5) for o in order]
        text = join_list([noun_phrase(o, with_size=w) for o, w in sized])
        return text, {"kind": "objects", "objects": [_description(o, w) for o, w in sized]}

    def shuffled() -> list[ShapeObject]:
        order = list(objects)
        rng.shuffle(order)
        return order

    caps: list[tuple[str, Claim]] = [listing(shuffled())]
    count = f"{NUMBER_WORDS[n]} shape{'s' if n > 1 else ''}"
    text, claim = listing(shuffled())
    caps.append((f"{count}: {text}", claim))
    text, claim = listing(shuffled())
    caps.append((f"there is {text}" if n == 1 else f"there are {count}: {text}", claim))
    lead = rng.choice(["a picture of", "an image of", "a drawing of"])
    text, claim = listing(shuffled())
    caps.append((f"{lead} {text}", claim))

    # grouped by colour ("two red shapes and a blue shape") and by shape ("a circle and two squares")
    color_counts = Counter(o.color for o in objects)
    by_color = [c for c in COLORS if color_counts[c]]
    caps.append(
        (
            join_list([count_phrase(color_counts[c], f"{c} shape", f"{c} shapes") for c in by_color]),
            {"kind": "colors", "counts": {c: color_counts[c] for c in by_color}},
        )
    )
    shape_counts = Counter(o.shape for o in objects)
    by_shape = [s for s in SHAPES if shape_counts[s]]
    caps.append(
        (
            join_list([count_phrase(shape_counts[s], s, PLURAL_SHAPES[s]) for s in by_shape]),
            {"kind": "shapes", "counts": {s: shape_counts[s] for s in by_shape}},
        )
    )

    # left-to-right listing, only when every neighbour pair is clearly separated horizontally
    if n >= 2:
        order = sorted(objects, key=lambda o: o.x)
        if all(relation_holds(a, b, "left") for a, b in pairwise(order)):
            text, claim = listing(order)
            caps.append((f"from left to right: {text}", claim))

    # one relational caption: "a large green triangle to the left of a yellow circle [and two other shapes]"
    pairs = [
        (a, b, rel) for a, b in combinations(objects, 2) for rel in RELATIONS if relation_holds(a, b, rel)
    ]
    if pairs:
        a, b, rel = rng.choice(pairs)
        if rng.random() < 0.5:
            a, b, rel = b, a, OPPOSITE[rel]
        size_a, size_b = rng.random() < 0.5, rng.random() < 0.5
        text = (
            f"{noun_phrase(a, with_size=size_a)} {CAPTION_RELATION_PHRASES[rel]} "
            f"{noun_phrase(b, with_size=size_b)}"
        )
        rest = n - 2
        if rest:
            text += f" and {NUMBER_WORDS[rest]} other shape{'s' if rest > 1 else ''}"
        claim = {"kind": "relation", "count": n, "a": _description(a, size_a), "rel": rel}
        claim["b"] = _description(b, size_b)
        caps.append((text, claim))
    return caps


def _questions(rng: random.Random, objects: list[ShapeObject]) -> list[QA]:
    n = len(objects)
    qas: list[QA] = []

    # colour of a uniquely described object (description without colour, so the answer is not given away)
    color_refs = [(i, r) for i in range(n) if (r := _unique_ref(objects, i, _REF_NO_COLOR))]
    if color_refs:
        i, ref = rng.choice(color_refs)
        qas.append(QA(f"what color is the {ref}?", objects[i].color, "color"))

    shape_refs = [(i, r) for i in range(n) if (r := _unique_ref(objects, i, _REF_NO_SHAPE))]
    if shape_refs:
        i, ref = rng.choice(shape_refs)
        qas.append(QA(f"what shape is the {ref} object?", objects[i].shape, "shape"))

    # counts: total, per colour present, per shape present (answers stay within 1..4)
    kind = rng.choice(["total", "color", "shape"])
    if kind == "total":
        qas.append(QA("how many shapes are there?", str(n), "count"))
    elif kind == "color":
        c = rng.choice([o.color for o in objects])
        qas.append(QA(f"how many {c} shapes are there?", str(sum(o.color == c for o in objects)), "count"))
    else:
        s = rng.choice([o.shape for o in objects])
        qas.append(
            QA(f"how many {PLURAL_SHAPES[s]} are there?", str(sum(o.shape == s for o in objects)), "count")
        )

    # existence: exactly one "yes" and one "no" per scene; "no" prefers near misses that share the colour
    # or the shape of a present object, so answering needs colour–shape binding
    present = {(o.color, o.shape) for o in objects}
    yes_c, yes_s = rng.choice(sorted(present))
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    near = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)]
    no_c, no_s = rng.choice(near if near and rng.random() < 0.75 else absent)
    exist = [
        QA(f"is there {article(yes_c)} {yes_c} {yes_s}?", "yes", "exist"),
        QA(f"is there {article(no_c)} {no_c} {no_s}?", "no", "exist"),
    ]
    rng.shuffle(exist)
    qas.extend(exist)

    # relations between two uniquely referable objects, only on a clearly separated axis
    refs = {i: r for i in range(n) if (r := _unique_ref(objects, i, _REF_WITH_ALL))}
    candidates = [
        (i, j, rel)
        for i in refs
        for j in refs
        if i != j
        for rel in RELATIONS
        if relation_holds(objects[i], objects[j], rel)
    ]
    if candidates:
        i, j, rel = rng.choice(candidates)
        if rng.random() < 0.5:
            qas.append(
                QA(f"is the {refs[i]} {QUESTION_RELATION_PHRASES[rel]} the {refs[j]}?", "yes", "relation")
            )
        else:
            # the opposite relation on the same clearly separated axis is false
            wrong = OPPOSITE[rel]
            qas.append(
                QA(f"is the {refs[i]} {QUESTION_RELATION_PHRASES[wrong]} the {refs[j]}?", "no", "relation")
            )

    # "what shape / what color is left of the X?": exactly one object clearly on that side, all others
    # clearly on the opposite side
    queries: list[tuple[int, int, str]] = []
    for j in refs:
        for rel in RELATIONS:
            others = [k for k in range(n) if k != j]
            hits = [k for k in others if relation_holds(objects[k], objects[j], rel)]
            clear_rest = all(
                relation_holds(objects[k], objects[j], OPPOSITE[rel]) for k in others if k not in hits
            )
            if len(hits) == 1 and clear_rest:
                queries.append((hits[0], j, rel))
    if queries:
        k, j, rel = rng.choice(queries)
        phrase = QUESTION_RELATION_PHRASES[rel]
        if rng.random() < 0.5:
            qas.append(QA(f"what shape is {phrase} the {refs[j]}?", objects[k].shape, "relation"))
        else:
            qas.append(QA(f"what color is the shape {phrase} the {refs[j]}?", objects[k].color, "relation"))
    return qas


def generate_scene(seed: int, index: int) -> Scene:
    """Scene ``index`` of the stream with ``seed`` (objects, captions and questions)."""
    rng = _rng(seed, index)
    background = rng.choice(list(BACKGROUNDS))
    objects = _place_objects(rng, rng.randint(1, MAX_OBJECTS))
    captioned = _captions(rng, objects)
    questions = _questions(rng, objects)
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

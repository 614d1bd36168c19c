"""The words of the shapes world: every caption of a scene with the claim it makes, and its
question/answer pairs, drawn from the scene's random stream (the rules they keep are in
:mod:`training.data.shapes`; the tests recompute every caption and answer from the objects).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from itertools import combinations, pairwise

from training.data.shapes import (
    COLORS,
    OPPOSITE,
    QA,
    RELATIONS,
    SHAPES,
    Claim,
    ShapeObject,
    relation_holds,
)
from training.data.source_writing import article

NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
PLURAL_SHAPES: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles"}
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


def _description(obj: ShapeObject, with_size: bool) -> list[str | None]:
    return [obj.size if with_size else None, obj.color, obj.shape]


def scene_captions(rng: random.Random, objects: list[ShapeObject]) -> list[tuple[str, Claim]]:
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


def scene_questions(rng: random.Random, objects: list[ShapeObject]) -> list[QA]:
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

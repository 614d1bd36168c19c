"""The shapes world: every caption and answer is recomputed from the scene's objects by an independent
parser and checker written here (it only shares the vocabulary words with the generator)."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import pytest

from training.data import shapes
from training.data.shapes import ShapeObject
from training.data.shapes_generation import generate_scene, render_scene, scene_png

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPE_NAMES = ["circle", "square", "triangle"]
NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
CLEAR = 8  # a relation must hold by at least this many pixels between centres
SIZE = 64
ANSWERS = set(COLORS) | set(SHAPE_NAMES) | {"1", "2", "3", "4", "yes", "no"}

C = "|".join(COLORS)
S = "|".join(SHAPE_NAMES)
OBJ = rf"(?:a|an) (?:(?:small|large) )?(?:{C}) (?:{S})"
OBJ_PARTS = re.compile(rf"^(a|an) (?:(small|large) )?({C}) ({S})$")
LIST = rf"{OBJ}(?:, {OBJ})*(?: and {OBJ})?"
REL_CAPTION = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}
REL_QUESTION = {"left of": "left", "right of": "right", "above": "above", "below": "below"}
REL_Q = "left of|right of|above|below"
REF = rf"(?:(?:small|large) )?(?:(?:{C}) )?(?:{S})"

Spec = tuple[str | None, str, str]  # (size or None, colour, shape)


def holds(a: ShapeObject, b: ShapeObject, rel: str) -> bool:
    """'a is <rel> b' with the clear margin (image y grows downwards)."""
    return {
        "left": b.x - a.x >= CLEAR,
        "right": a.x - b.x >= CLEAR,
        "above": b.y - a.y >= CLEAR,
        "below": a.y - b.y >= CLEAR,
    }[rel]


def opposite(rel: str) -> str:
    return {"left": "right", "right": "left", "above": "below", "below": "above"}[rel]


def parse_obj(text: str) -> Spec:
    m = OBJ_PARTS.match(text)
    assert m, f"not an object phrase: {text!r}"
    art, size, color, shape = m.groups()
    first = (size or color)[0]
    assert art == ("an" if first in "aeiou" else "a"), f"wrong article in {text!r}"
    return size, color, shape


def split_list(text: str) -> list[str]:
    head, _, last = text.rpartition(" and ")
    return [*head.split(", "), last] if head else [last]


def matches(spec: Spec, o: ShapeObject) -> bool:
    size, color, shape = spec
    return (size is None or size == o.size) and color == o.color and shape == o.shape


def covers_all(specs: list[Spec], objects: list[ShapeObject]) -> bool:
    """The phrases describe exactly the objects of the scene (a perfect matching)."""
    if len(specs) != len(objects):
        return False
    return any(
        all(matches(s, o) for s, o in zip(specs, perm, strict=True))
        for perm in itertools.permutations(objects)
    )


def ref_matches(ref: str, objects: list[ShapeObject]) -> list[ShapeObject]:
    words = ref.split()
    out = []
    for o in objects:
        ok = words[-1] == o.shape
        for w in words[:-1]:
            ok = ok and (w == o.size if w in ("small", "large") else w == o.color)
        if ok:
            out.append(o)
    return out


def unique(ref: str, objects: list[ShapeObject]) -> ShapeObject:
    found = ref_matches(ref, objects)
    assert len(found) == 1, f"reference {ref!r} is ambiguous or empty: {found}"
    return found[0]


def check_caption(cap: str, objects: list[ShapeObject]) -> str:
    n = len(objects)
    if m := re.fullmatch(rf"from left to right: ({LIST})", cap):
        specs = [parse_obj(p) for p in split_list(m.group(1))]
        assert len(specs) == n >= 2
        # the listed order must be left to right with a clear margin, and every object matched in order
        order = sorted(objects, key=lambda o: o.x)
        assert all(matches(s, o) for s, o in zip(specs, order, strict=True)), cap
        assert all(holds(a, b, "left") for a, b in itertools.pairwise(order)), cap
        return "left_to_right"
    if m := re.fullmatch(rf"(one|two|three|four) shapes?: ({LIST})", cap):
        assert NUMBERS[m.group(1)] == n
        assert (m.group(1) == "one") == cap.startswith("one shape:")
        assert covers_all([parse_obj(p) for p in split_list(m.group(2))], objects), cap
        return "count"
    if m := re.fullmatch(rf"there is ({OBJ})", cap):
        assert n == 1 and covers_all([parse_obj(m.group(1))], objects), cap
        return "there"
    if m := re.fullmatch(rf"there are (two|three|four) shapes: ({LIST})", cap):
        assert NUMBERS[m.group(1)] == n
        assert covers_all([parse_obj(p) for p in split_list(m.group(2))], objects), cap
        return "there"
    if m := re.fullmatch(rf"(?:a picture of|an image of|a drawing of) ({LIST})", cap):
        assert covers_all([parse_obj(p) for p in split_list(m.group(1))], objects), cap
        return "picture"
    if re.fullmatch(LIST, cap):
        assert covers_all([parse_obj(p) for p in split_list(cap)], objects), cap
        return "list"
    group_c = rf"(?:a|an|two|three|four) (?:{C}) shapes?"
    if re.fullmatch(rf"{group_c}(?:, {group_c})*(?: and {group_c})?", cap):
        counts: Counter[str] = Counter()
        for g in split_list(cap):
            num, color, noun = g.split()
            assert (NUMBERS[num] == 1) == (noun == "shape"), cap
            counts[color] += NUMBERS[num]
        assert counts == Counter(o.color for o in objects), cap
        return "by_color"
    group_s = rf"(?:a|an|two|three|four) (?:{S})s?"
    if re.fullmatch(rf"{group_s}(?:, {group_s})*(?: and {group_s})?", cap):
        counts = Counter()
        for g in split_list(cap):
            num, noun = g.split()
            assert (NUMBERS[num] == 1) == (not noun.endswith("s")), cap
            counts[noun.rstrip("s")] += NUMBERS[num]
        assert counts == Counter(o.shape for o in objects), cap
        return "by_shape"
    rel_words = "|".join(REL_CAPTION)
    if m := re.fullmatch(rf"({OBJ}) ({rel_words}) ({OBJ})(?: and (one|two) other shapes?)?", cap):
        a_spec, b_spec = parse_obj(m.group(1)), parse_obj(m.group(3))
        rel = REL_CAPTION[m.group(2)]
        others = NUMBERS[m.group(4)] if m.group(4) else 0
        assert others == n - 2, cap
        assert any(
            matches(a_spec, a) and matches(b_spec, b) and holds(a, b, rel)
            for a, b in itertools.permutations(objects, 2)
        ), cap
        return "relation"
    raise AssertionError(f"caption matches no known template: {cap!r}")


def check_question(question: str, answer: str, qtype: str, objects: list[ShapeObject]) -> None:
    assert answer in ANSWERS, (question, answer)
    if m := re.fullmatch(rf"what color is the ((?:(?:small|large) )?(?:{S}))\?", question):
        assert qtype == "color" and answer == unique(m.group(1), objects).color
    elif m := re.fullmatch(rf"what shape is the ((?:small|large) )?({C}) object\?", question):
        found = [
            o for o in objects if o.color == m.group(2) and (not m.group(1) or o.size == m.group(1).strip())
        ]
        assert qtype == "shape" and len(found) == 1 and answer == found[0].shape, question
    elif question == "how many shapes are there?":
        assert qtype == "count" and answer == str(len(objects))
    elif m := re.fullmatch(rf"how many ({C}) shapes are there\?", question):
        assert qtype == "count" and answer == str(sum(o.color == m.group(1) for o in objects)) != "0"
    elif m := re.fullmatch(rf"how many ({S})s are there\?", question):
        assert qtype == "count" and answer == str(sum(o.shape == m.group(1) for o in objects)) != "0"
    elif m := re.fullmatch(rf"is there (a|an) ({C}) ({S})\?", question):
        assert m.group(1) == ("an" if m.group(2)[0] in "aeiou" else "a")
        present = any(o.color == m.group(2) and o.shape == m.group(3) for o in objects)
        assert qtype == "exist" and answer == ("yes" if present else "no"), question
    elif m := re.fullmatch(rf"is the ({REF}) ({REL_Q}) the ({REF})\?", question):
        a, b = unique(m.group(1), objects), unique(m.group(3), objects)
        assert a is not b
        rel = REL_QUESTION[m.group(2)]
        assert qtype == "relation"
        if answer == "yes":
            assert holds(a, b, rel), question
        else:  # "no" only when the opposite is clearly true, never for an ambiguous pair
            assert answer == "no" and holds(a, b, opposite(rel)), question
    elif m := re.fullmatch(rf"what (shape|color) is (?:the shape )?({REL_Q}) the ({REF})\?", question):
        assert (m.group(1) == "color") == question.startswith("what color is the shape ")
        ref = unique(m.group(3), objects)
        rel = REL_QUESTION[m.group(2)]
        others = [o for o in objects if o is not ref]
        hits = [o for o in others if holds(o, ref, rel)]
        assert len(hits) == 1, question
        assert all(holds(o, ref, opposite(rel)) for o in others if o is not hits[0]), question
        assert qtype == "relation"
        assert answer == (hits[0].shape if m.group(1) == "shape" else hits[0].color)
    else:
        raise AssertionError(f"question matches no known template: {question!r}")


SCENES = [generate_scene(seed, index) for seed in range(6) for index in range(120)]


def test_scene_geometry_is_valid() -> None:
    counts = Counter(len(s.objects) for s in SCENES)
    assert set(counts) == {1, 2, 3, 4}
    for scene in SCENES:
        for o in scene.objects:
            assert o.color in COLORS and o.shape in SHAPE_NAMES and o.size in ("small", "large")
            assert o.radius == shapes.SIZES[o.size]
            assert (
                o.x - o.radius >= 0
                and o.x + o.radius < SIZE
                and o.y - o.radius >= 0
                and o.y + o.radius < SIZE
            )
        for a, b in itertools.combinations(scene.objects, 2):
            # bounding boxes do not touch: separated on at least one axis
            assert max(abs(a.x - b.x), abs(a.y - b.y)) > a.radius + b.radius, scene
    assert shapes.SIZES["large"] > shapes.SIZES["small"] + 3  # sizes are visibly different
    assert shapes.MARGIN >= CLEAR


def test_every_caption_is_true() -> None:
    kinds: Counter[str] = Counter()
    for scene in SCENES:
        assert len(scene.captions) == len(set(scene.captions)) or len(scene.objects) == 1
        for cap in scene.captions:
            kinds[check_caption(cap, scene.objects)] += 1
    # every template is produced
    assert set(kinds) == {
        "left_to_right",
        "count",
        "there",
        "picture",
        "list",
        "by_color",
        "by_shape",
        "relation",
    }


def test_every_answer_is_true_and_balanced() -> None:
    types: Counter[str] = Counter()
    yes_no: dict[str, Counter[str]] = {"exist": Counter(), "relation": Counter()}
    for scene in SCENES:
        exist = [q.answer for q in scene.questions if q.type == "exist"]
        assert sorted(exist) == ["no", "yes"]  # exactly balanced per scene
        for q in scene.questions:
            check_question(q.question, q.answer, q.type, scene.objects)
            types[q.type] += 1
            if q.answer in ("yes", "no") and q.type in yes_no:
                yes_no[q.type][q.answer] += 1
    assert set(types) == {"color", "shape", "count", "exist", "relation"}
    rel = yes_no["relation"]
    assert 0.4 < rel["yes"] / (rel["yes"] + rel["no"]) < 0.6
    answers = Counter(q.answer for s in SCENES for q in s.questions)
    assert set(answers) <= set(shapes.ANSWERS) == ANSWERS


def test_checker_rejects_false_statements() -> None:
    """The checker itself catches wrong captions/answers (so passing means something)."""
    objs = [
        ShapeObject("red", "circle", "small", 10, 30, 6),
        ShapeObject("blue", "square", "large", 45, 30, 11),
    ]
    check_caption("a red circle to the left of a large blue square", objs)
    for bad in [
        "a red circle to the right of a blue square",
        "a blue circle and a red square",
        "three shapes: a red circle and a blue square",
        "a small red circle above a blue square",
    ]:
        with pytest.raises(AssertionError):
            check_caption(bad, objs)
    with pytest.raises(AssertionError):
        check_question("what color is the circle?", "blue", "color", objs)
    with pytest.raises(AssertionError):  # same height: neither above nor below, so "no" is not allowed
        check_question("is the circle above the square?", "no", "relation", objs)


def test_rendering_matches_description() -> None:
    for scene in SCENES[:150]:
        img = render_scene(scene).convert("RGB")
        assert img.size == (SIZE, SIZE)
        bg = shapes.BACKGROUNDS[scene.background]
        for o in scene.objects:
            want = shapes.COLORS[o.color]
            # the centre is inside every shape (the triangle is half as wide at mid-height)
            got = img.getpixel((o.x, o.y))
            assert isinstance(got, tuple)
            assert max(abs(g - w) for g, w in zip(got, want, strict=True)) < 30, (scene, o, got)
            # the bounding box's top-left corner is filled only for squares
            corner = img.getpixel((o.x - o.radius + 1, o.y - o.radius + 1))
            assert isinstance(corner, tuple)
            near = max(abs(g - w) for g, w in zip(corner, want, strict=True)) < 30
            assert near == (o.shape == "square"), (o, corner, bg)


def test_determinism_and_seeds_differ() -> None:
    a = [generate_scene(7, i) for i in range(20)]
    b = [generate_scene(7, i) for i in range(20)]
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    assert [scene_png(s) for s in a[:5]] == [scene_png(s) for s in b[:5]]
    other = [generate_scene(8, i) for i in range(20)]
    assert sum(x.to_dict()["objects"] != y.to_dict()["objects"] for x, y in zip(a, other, strict=True)) >= 19
    assert len({scene_png(s) for s in a}) == 20
    round_trip = shapes.Scene.from_dict(a[3].to_dict())
    assert round_trip == a[3]

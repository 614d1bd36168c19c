"""ITM negatives are false of their image: shapes claims checked on generated scenes, class labels for
Fashion-MNIST / clip art, and rows without a false caption left out of the loss."""

from __future__ import annotations

from dataclasses import asdict

import torch

from momo.config import get_preset
from momo.model import MoMoEncoder
from training.data import shapes
from training.data.shapes_generation import generate_scenes
from training.losses.base import Batch
from training.losses.matching import ITMLoss, false_caption_mask, sample_hard_negatives


def _scene_meta(scenes: list[shapes.Scene], caption: int) -> dict[str, list[object]]:
    picks = [min(caption, len(s.captions) - 1) for s in scenes]
    return {
        "objects": [[asdict(o) for o in s.objects] for s in scenes],
        "claim": [s.claims[p] for s, p in zip(scenes, picks, strict=True)],
        "category": [None] * len(scenes),
    }


def test_every_caption_is_true_of_its_own_scene() -> None:
    for scene in generate_scenes(seed=11, count=300):
        assert len(scene.claims) == len(scene.captions)
        for claim in scene.claims:
            assert shapes.caption_true_of(claim, scene.objects)


def test_claims_catch_captions_that_stay_true_of_another_scene() -> None:
    a = shapes.Scene(0, 0, "white", [shapes.ShapeObject("red", "circle", "small", 10, 10, 6)])
    b = shapes.Scene(0, 1, "white", [shapes.ShapeObject("red", "circle", "large", 40, 40, 11)])
    unsized = {"kind": "objects", "objects": [[None, "red", "circle"]]}
    sized = {"kind": "objects", "objects": [["small", "red", "circle"]]}
    assert shapes.caption_true_of(unsized, b.objects)  # "a red circle" is true of both
    assert not shapes.caption_true_of(sized, b.objects)  # "a small red circle" is not
    assert shapes.caption_true_of({"kind": "shapes", "counts": {"circle": 1}}, a.objects)
    assert not shapes.caption_true_of({"kind": "colors", "counts": {"blue": 1}}, a.objects)


def test_mask_never_offers_a_caption_that_is_true_of_the_image() -> None:
    scenes = list(generate_scenes(seed=5, count=64))
    for caption in range(6):  # listings, colour and shape groups: many are true of other scenes
        meta = _scene_meta(scenes, caption)
        mask = false_caption_mask(meta, len(scenes))
        assert not mask.diagonal().any()
        for i, scene in enumerate(scenes):
            for j in range(len(scenes)):
                true_of_i = shapes.caption_true_of(meta["claim"][j], scene.objects)  # type: ignore[arg-type]
                assert bool(mask[i, j]) == (i != j and not true_of_i)
        if caption >= 4:  # "a red shape and a blue shape" is true of several scenes in 64
            assert (~mask).sum() > len(scenes)


def test_class_labels_and_sources() -> None:
    meta = {"category": ["coat", "coat", "bag", None], "objects": None, "claim": None}
    mask = false_caption_mask(meta, 4)
    assert not mask[0, 1] and not mask[1, 0]  # another coat photo's caption is true of a coat
    assert mask[0, 2] and mask[2, 0]
    assert mask[0, 3] and mask[3, 0]  # unannotated items: index-based negatives (user data)


def test_sampler_only_draws_allowed_columns_and_flags_rows_without_any() -> None:
    g = torch.Generator().manual_seed(0)
    similarity = torch.randn(5, 5)
    allowed = torch.zeros(5, 5, dtype=torch.bool)
    allowed[0, 3] = allowed[1, 4] = allowed[1, 2] = True
    for _ in range(50):
        columns, has = sample_hard_negatives(similarity, g, allowed)
        assert has.tolist() == [True, True, False, False, False]
        assert columns[0] == 3 and columns[1] in (2, 4)


def test_itm_loss_leaves_out_images_whose_every_caption_is_true() -> None:
    config = get_preset("momo-test")
    torch.manual_seed(0)
    encoder = MoMoEncoder(config)
    itm = ITMLoss(config.width)
    b = 4
    batch = Batch(
        pixels=torch.randn(b, 3, config.image_size, config.image_size),
        input_ids=torch.randint(5, config.vocab_size, (b, 6)),
        attention_mask=torch.ones(b, 6, dtype=torch.long),
        meta={"category": ["coat"] * b},  # every caption is true of every image: no negative at all
    )
    context: dict[str, object] = {}
    loss = itm(encoder, batch, torch.Generator().manual_seed(0), context)["itm"]
    assert torch.isfinite(loss) and context["itm_negatives"] == 0
    batch.meta = {"category": ["coat", "bag", "shirt", "dress"]}
    itm(encoder, batch, torch.Generator().manual_seed(0), context)
    assert context["itm_negatives"] == 2 * b  # one false caption per image, one false image per caption

"""The arms of `momo ablate` (:mod:`training.ablation`): the paper's claims, under the same budget.

Arms (each a transformation of one base recipe, so they share data, seeds and tokenizer):
- `momo`        — one shared encoder, three pretraining stages, simultaneous updates (the method);
- `separate`    — FLAVA-style image tower + text tower + fusion encoder (`towers: separate`);
- `all_at_once` — every pretraining stream and objective from step 0, in one stage of the same
                  total steps (so every stream runs on every step: more samples and compute);
- `all_at_once_matched` — the same, with each stream's batch scaled by its stage's share of the
                  steps, so every stream sees the samples it sees in the staged recipe;
- `alternating` — one stream per step; steps × streams, so each stream sees as many samples;
- `small`       — the same recipe on `momo-small` (scale).
The `downstream` stage (VQA head + projection) is the same in every arm. Every arm is evaluated by
the evaluation suite on held-out splits; key arms repeat over seeds, read as mean ± spread.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from typing import Any

from training.recipe import Recipe, StageSpec

DOWNSTREAM = "downstream"


def _pretraining_and_downstream(recipe: Recipe) -> tuple[list[StageSpec], list[StageSpec]]:
    pre = [s for s in recipe.stages if s.name != DOWNSTREAM]
    post = [s for s in recipe.stages if s.name == DOWNSTREAM]
    return pre, post


def arm_momo(recipe: Recipe) -> Recipe:
    return recipe


def arm_separate(recipe: Recipe) -> Recipe:
    return dataclasses.replace(recipe, config={**recipe.config, "towers": "separate"})


def arm_all_at_once(recipe: Recipe) -> Recipe:
    """One pretraining stage with every stream (and its objectives) of every pretraining stage."""
    pre, post = _pretraining_and_downstream(recipe)
    streams = []
    seen: set[str] = set()
    for stage in pre:
        for stream in stage.streams:
            name = stream.name if stream.name not in seen else f"{stage.name}_{stream.name}"
            seen.add(name)
            streams.append(dataclasses.replace(stream, name=name))
    weights: dict[str, float] = {}
    options: dict[str, dict[str, Any]] = {}
    for stage in pre:
        weights.update(stage.weights)
        options.update(stage.objective_options)
    merged = StageSpec(
        name="all_at_once",
        steps=sum(s.steps for s in pre),
        streams=streams,
        lr=statistics.fmean(s.lr for s in pre),
        warmup_steps=pre[0].warmup_steps,
        weight_decay=pre[0].weight_decay,
        weights=weights,
        objective_options=options,
        log_every=pre[0].log_every,
    )
    return dataclasses.replace(recipe, stages=[merged, *post])


def arm_all_at_once_matched(recipe: Recipe) -> Recipe:
    """All-at-once with the staged recipe's samples per stream (and so about its compute).

    A stream of a stage with `s` of the `S` pretraining steps runs on all `S` steps here, with
    `batch × s / S` items (at least 2): `steps × batch` per stream matches the staged arm. Contrastive
    streams then see fewer in-batch negatives per step, which is the price of the match.
    """
    pre, _ = _pretraining_and_downstream(recipe)
    total = sum(s.steps for s in pre)
    batches = [
        max(2, round(stream.batch_size * stage.steps / total)) for stage in pre for stream in stage.streams
    ]
    merged_recipe = arm_all_at_once(recipe)
    merged = merged_recipe.stages[0]
    # arm_all_at_once keeps the streams in stage order, so they line up with `batches`.
    streams = [
        dataclasses.replace(stream, batch_size=batch)
        for stream, batch in zip(merged.streams, batches, strict=True)
    ]
    return dataclasses.replace(
        merged_recipe, stages=[dataclasses.replace(merged, streams=streams), *merged_recipe.stages[1:]]
    )


def arm_alternating(recipe: Recipe) -> Recipe:
    """One stream per step (round-robin); steps × streams so every stream sees the same samples."""
    pre, post = _pretraining_and_downstream(recipe)
    stages = [
        dataclasses.replace(s, mode="alternating", steps=s.steps * len(s.streams), log_every=s.log_every * 2)
        for s in pre
    ]
    return dataclasses.replace(recipe, stages=[*stages, *post])


def arm_small(recipe: Recipe) -> Recipe:
    return dataclasses.replace(recipe, preset="momo-small")


ARMS: dict[str, Callable[[Recipe], Recipe]] = {
    "momo": arm_momo,
    "separate": arm_separate,
    "all_at_once": arm_all_at_once,
    "all_at_once_matched": arm_all_at_once_matched,
    "alternating": arm_alternating,
    "small": arm_small,
}
CLAIMS = {
    "separate": "shared vs separate encoders",
    "all_at_once": "stage-wise vs all-at-once (same steps)",
    "all_at_once_matched": "stage-wise vs all-at-once (same samples per stream)",
    "alternating": "simultaneous vs alternating updates",
    "small": "scale (tiny vs small)",
}

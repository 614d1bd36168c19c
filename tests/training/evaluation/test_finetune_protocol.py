"""The language fine-tune protocol: on micro data, a model whose encoder already carries the task
beats its random-weights twin fine-tuned with the same budget; selection reads val, never test."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from momo.artifact import Manifest, load_artifact, save_artifact
from momo.config import get_preset
from momo.tokenizer import MoMoTokenizer
from tests.factories import random_model
from training.evaluation.common import EvalSettings
from training.evaluation.language import finetune_scores
from training.finetune import FinetuneOptions, build_task, fit_task
from training.streams import StreamData

WORDS = (  # noqa: SIM905
    "a photo of the quick brown fox jumps over lazy dog you will be successful in your work"
).split()


def _texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    """The label is the colour word hidden among filler words: trivially learnable from tokens."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        colour = rng.choice(["red", "blue"])
        words = rng.sample(WORDS, 5)
        words.insert(rng.randrange(6), colour)
        texts.append(" ".join(words))
        labels.append(colour)
    return texts, labels


def _data(texts: list[str], labels: list[str], tokenizer: MoMoTokenizer) -> StreamData:
    batch = tokenizer.encode_batch(texts, 16, pad_to=16)
    names = sorted(set(labels))
    return StreamData(
        "text_class",
        tokens=batch.input_ids,
        lengths=batch.attention_mask.sum(axis=1),
        labels=np.asarray([names.index(y) for y in labels]),
        label_names=names,
        pad_id=tokenizer.pad_id,
    )


def test_pretrained_encoder_beats_its_random_twin(tmp_path: Path, test_tokenizer: MoMoTokenizer) -> None:
    config = get_preset("momo-test")
    train, val, test = _texts(96, 1), _texts(48, 2), _texts(64, 3)
    # "pretraining": an encoder trained on the task, saved without the head it was trained with
    pretrained = random_model(config, seed=1)
    options = FinetuneOptions(
        task="text_classification",
        epochs=1000,
        max_steps=120,
        learning_rate=1e-3,
        validation_split=0.0,
        device="cpu",
        early_stopping_patience=None,
        export_onnx=False,
        head="warmup",
    )
    data = _data(*train, test_tokenizer)
    fit_task(
        build_task(pretrained, data, options, torch.device("cpu"), test_tokenizer),
        np.arange(96),
        np.arange(0),
        options,
    )
    del pretrained.heads["warmup"], pretrained.head_specs["warmup"]
    save_artifact(tmp_path / "model", pretrained.eval(), test_tokenizer, Manifest(name="m", version="v1"))
    save_artifact(
        tmp_path / "twin",
        random_model(config, seed=2),
        test_tokenizer,
        Manifest(name="m-random", version="v0"),
    )
    artifacts = {name: load_artifact(tmp_path / name) for name in ("model", "twin")}
    settings = EvalSettings(
        data_dir=tmp_path, finetune_steps=12, finetune_lr=1e-4, finetune_batch=16, finetune_eval_every=4
    )
    scores = finetune_scores(artifacts, settings, train, val, test)
    (model_val, model_test), (twin_val, twin_test) = scores["model"], scores["twin"]
    assert model_test >= 0.9  # the encoder's features carry the colour: a fresh head finds it at once
    assert model_test > twin_test + 0.2  # same budget, random weights: near chance
    assert 0.0 <= twin_val <= 1.0 and 0.0 <= model_val <= 1.0
    # the artifact on disk is untouched by the protocol (it fine-tunes copies)
    assert "finetune_protocol" not in load_artifact(tmp_path / "model").heads.heads

"""Shared fixtures: seeded RNGs, the test-size config, a tokenizer trained on a small corpus."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

SAMPLE_CORPUS = [
    "a red circle to the left of a blue square",
    "a small green triangle above a large yellow circle",
    "a photo of a sneaker",
    "a photo of an ankle boot",
    "a black and white photo of a dress",
    "how many shapes are there",
    "is there a purple square",
    "what color is the triangle",
    "an emoji of a grinning face",
    "the quick brown fox jumps over the lazy dog",
    "a domesticated carnivorous mammal that typically has a long snout",
    "you will be successful in your work",
    "a person who writes computer programs",
] * 4


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(1)  # subprocess servers and workers share the cores in many tests
    except ImportError:  # pragma: no cover - torch is always installed in the test venv
        pass


@pytest.fixture(scope="session")
def sample_corpus() -> list[str]:
    return list(SAMPLE_CORPUS)


@pytest.fixture(scope="session")
def test_tokenizer():
    from momo.tokenizer import MoMoTokenizer

    return MoMoTokenizer.train(SAMPLE_CORPUS, vocab_size=256, min_frequency=1)


@pytest.fixture(scope="session")
def test_config():
    from momo.config import get_preset

    return get_preset("momo-test")


@pytest.fixture()
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "model_store"

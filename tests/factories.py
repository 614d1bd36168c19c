"""Builders shared by tests of every package: a random-weight artifact registered in a store."""

from __future__ import annotations

from pathlib import Path

import torch

from momo.artifact import Manifest, save_artifact
from momo.config import MoMoConfig
from momo.heads import ITM_SPEC, HeadSpec
from momo.model import MoMoModel
from momo.store import ModelStore, VersionInfo
from momo.tokenizer import MoMoTokenizer

VQA_ANSWERS = ["yes", "no", "red", "blue", "circle", "square", "1", "2"]


def random_model(config: MoMoConfig, seed: int = 0, with_heads: bool = True) -> MoMoModel:
    torch.manual_seed(seed)
    specs = {}
    if with_heads:
        specs = {
            "itm": ITM_SPEC,
            "vqa": HeadSpec(input="pair", labels=list(VQA_ANSWERS), task="vqa", hidden=2 * config.width),
        }
    # with the heads, the MLM token head too (as pretraining keeps it since momo-tiny:v2)
    return MoMoModel(config, head_specs=specs, with_token_head=with_heads).eval()


def register_random(
    store: ModelStore,
    config: MoMoConfig,
    tokenizer: MoMoTokenizer,
    name: str = "momo-test",
    seed: int = 0,
    activate: bool = True,
    model: MoMoModel | None = None,
) -> VersionInfo:
    """Register `model` (default: a random one with ITM + VQA heads) as the next version of `name`."""
    model = model if model is not None else random_model(config, seed)

    def write(directory: Path, version: str) -> None:
        save_artifact(
            directory, model, tokenizer, Manifest(name=name, version=version, recipe={"seed": seed})
        )

    info = store.register(name, write)
    if activate:
        store.activate(info.reference)
    return info

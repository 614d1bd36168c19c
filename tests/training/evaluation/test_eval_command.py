"""`momo eval` end to end on micro data with a random momo-test artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from momo.artifact import Manifest, load_artifact, save_artifact
from momo.config import get_preset
from momo.store import ModelStore
from momo.tokenizer import MoMoTokenizer
from tests.factories import random_model, register_random
from training.evaluation.commands import register

SMALL = [
    "--max-train",
    "120",
    "--max-test",
    "40",
    "--max-retrieval",
    "40",
    "--max-vqa",
    "80",
    "--finetune-steps",
    "8",
    "--max-finetune-train",
    "120",
    "--max-val",
    "40",
    "--max-mlm",
    "40",
    "--max-itm",
    "20",
    "--no-progress",
]


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    register(app)
    return app


def test_eval_end_to_end(
    cli: typer.Typer, micro_data: Path, tmp_path: Path, test_tokenizer: MoMoTokenizer
) -> None:
    store = ModelStore(tmp_path / "store")
    info = register_random(store, get_preset("momo-test"), test_tokenizer)
    out = tmp_path / "out"
    args = [
        "eval",
        info.reference,
        "--store",
        str(store.root),
        "--data-dir",
        str(micro_data),
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(cli, [*args, *SMALL, "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    for name in ("eval.json", "eval.md", "vision.png", "language.png", "multimodal.png", "macro.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "macro.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "eval.json").read_text())
    tasks = {r["task"] for r in report["rows"]}
    assert tasks == {
        f"{source}_{kind}"
        for source in ("fashion_mnist", "clipart")
        for kind in ("linear_probe", "embedding_probe", "zero_shot")
    } | {
        f"{source}_{kind}"
        for source in ("wordnet_lexname", "fortunes_category")
        for kind in ("finetune", "linear_probe", "embedding_probe")
    } | {
        "heldout_mlm",
        "shapes_retrieval",
        "emoji_retrieval",
        "clipart_retrieval",
        "shapes_vqa",
        "heldout_itm",
    }
    assert not report["skipped"]
    # each group's macro average is over its paper protocol's rows
    primary = {(r["group"], r["protocol"]) for r in report["rows"] if r["primary"]}
    assert primary == {
        ("vision", "linear probe"),
        ("language", "fine-tune"),
        ("multimodal", "zero-shot"),
        ("multimodal", "pretrained head"),
    }
    mlm = next(r for r in report["rows"] if r["task"] == "heldout_mlm")
    assert mlm["model"] > 0 and mlm["trivial"] > 0 and not mlm["higher_is_better"]
    for row in report["rows"]:
        if row["task"] == "heldout_mlm":
            continue
        assert 0.0 <= row["model"] <= 1.0
        assert row["random_init"] is not None  # the random-weights baseline runs for every figure
        assert row["trivial"] is not None and row["n_test"] > 0
    probe = next(r for r in report["rows"] if r["task"] == "fashion_mnist_linear_probe")
    assert (probe["n_train"], probe["n_test"]) == (120, 40) and probe["feature"] is not None
    vqa_types = {r["metric"] for r in report["rows"] if r["task"] == "shapes_vqa"}
    assert "accuracy" in vqa_types and len(vqa_types) > 2  # overall + per question type
    assert set(report["macro"]["model"]) == {"vision", "language", "multimodal", "overall"}
    assert "| overall |" in (out / "eval.md").read_text()
    # the figures are in the (still valid) manifest
    metrics = load_artifact(info.path).manifest.metrics["eval"]
    assert metrics["macro"]["overall"] == pytest.approx(report["macro"]["model"]["overall"])
    assert "multimodal/shapes_retrieval/mean recall" in metrics["scores"]


def test_eval_without_vqa_head_and_without_manifest(
    cli: typer.Typer, micro_data: Path, tmp_path: Path, test_tokenizer: MoMoTokenizer
) -> None:
    model = random_model(get_preset("momo-test"), with_heads=False)
    path = tmp_path / "bare"
    save_artifact(path, model, test_tokenizer, Manifest(name="bare", version="v1"))
    manifest_before = (path / "manifest.json").read_text()
    out = tmp_path / "out"
    args = ["eval", str(path), "--data-dir", str(micro_data), "--out", str(out), "--groups", "multimodal"]
    result = CliRunner().invoke(
        cli, [*args, *SMALL, "--no-manifest", "--no-random-baseline", "--cache-dir", str(tmp_path / "cache")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert [s["task"] for s in report["skipped"]] == ["shapes_vqa", "heldout_itm"]
    assert "no 'vqa' head" in (out / "eval.md").read_text()
    assert {r["task"] for r in report["rows"]} == {"shapes_retrieval", "emoji_retrieval", "clipart_retrieval"}
    assert all(r["random_init"] is None for r in report["rows"])
    assert (path / "manifest.json").read_text() == manifest_before


def test_eval_rejects_unknown_group(cli: typer.Typer, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["eval", "x", "--groups", "audio", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2

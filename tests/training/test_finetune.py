"""Fine-tuning on micro data: every task beats the base on its validation split and registers a complete
new version; a frozen encoder stays bit-identical; cancellation and bad data register nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from momo.artifact import load_artifact
from momo.config import get_preset
from momo.store import ModelStore
from momo.tokenizer import MoMoTokenizer
from tests.factories import register_random
from training.data.formats import DataFormatError
from training.finetune import Cancelled, FinetuneError, FinetuneOptions, run_finetune

# micro data path (relative to the prepared folder), extra options that make a random base learn quickly
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "image_classification": ("fashion_mnist/train/images", {"epochs": 12, "learning_rate": 1e-3}),
    "text_classification": ("fortunes/train.jsonl", {"epochs": 12, "learning_rate": 1e-3, "batch_size": 16}),
    "retrieval": (
        "shapes/train/pairs.jsonl",
        {"epochs": 25, "learning_rate": 1e-3, "batch_size": 16, "early_stopping_patience": 0},
    ),
    "vqa": ("shapes/train/vqa.jsonl", {"epochs": 2, "learning_rate": 1e-3, "limit": 600}),
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # these models are tiny: a second thread only contends for busy cores


@pytest.fixture()
def base(micro_data: Path, tmp_path: Path) -> tuple[ModelStore, str]:
    store = ModelStore(tmp_path / "model_store")
    tokenizer = MoMoTokenizer.load(micro_data / "tokenizer.json")
    return store, register_random(store, get_preset("momo-test"), tokenizer).reference


@pytest.mark.parametrize("task", list(CASES))
def test_each_task_improves_over_the_base_and_registers_a_version(
    task: str, micro_data: Path, base: tuple[ModelStore, str]
) -> None:
    store, base_ref = base
    path, extra = CASES[task]
    events: list[str] = []
    steps: list[tuple[int, int]] = []
    options = FinetuneOptions(task=task, export_onnx=task == "image_classification", **extra)
    result = run_finetune(
        base_ref,
        micro_data / path,
        options,
        store_root=store.root,
        progress=lambda step, total, metrics: steps.append((step, total)),
        on_event=lambda message, data: events.append(message),
    )
    assert result.before is not None and result.after is not None
    assert result.after > result.before, (task, result.before, result.after, result.history)
    assert steps and steps[-1][0] == result.steps and all(t == steps[0][1] for _, t in steps)
    assert [s for s, _ in steps] == list(range(1, result.steps + 1))
    assert any("registered" in e for e in events)

    assert result.reference == "momo-test:v2"
    artifact = load_artifact(store.resolve(result.reference))  # hashes verified
    manifest = artifact.manifest
    assert manifest.parent == base_ref
    recipe = manifest.recipe["finetune"]
    assert recipe["task"] == task and recipe["hyperparameters"]["learning_rate"] == extra["learning_rate"]
    assert manifest.data["path"] == str(micro_data / path)
    assert manifest.data["train"] + manifest.data["validation"] == manifest.data["items"]
    figures = manifest.metrics["finetune"]
    assert figures["validation_before"] == result.before and figures["validation_after"] == result.after
    if task == "retrieval":
        assert result.metric == "r@1" and result.head is None
        assert artifact.heads.temperature != pytest.approx(0.07)  # the learnt temperature is kept
    else:
        spec = artifact.heads.heads[result.head or ""]
        assert spec.labels == result.labels and spec.input == {"vqa": "pair"}.get(task, task.split("_")[0])
        assert spec.metrics["val_accuracy"] == pytest.approx(result.after, abs=1e-6)
        model = artifact.load_model()
        assert result.head in model.heads
    if task == "image_classification":  # the ONNX runtime serves the new head from the version's own graphs
        from momo.runtime import load_runtime

        assert {"image_encoder.onnx", "text_encoder.onnx", "pair_encoder.onnx"} <= set(manifest.files)
        runtime = load_runtime(artifact, "onnx", device="cpu", threads=1, cache_dir=store.root / "no-cache")
        assert Path(runtime.describe()["graphs"]) == artifact.path
        pixels = torch.randn(3, 3, 16, 16).numpy()
        expected = artifact.load_model().head_logits(result.head or "", pixels=torch.from_numpy(pixels))
        got = runtime.head_logits(result.head or "", pixels=pixels)
        assert abs(got - expected.detach().numpy()).max() < 1e-4
        runtime.close()


def test_frozen_encoder_leaves_encoder_weights_unchanged(
    micro_data: Path, base: tuple[ModelStore, str]
) -> None:
    store, base_ref = base
    result = run_finetune(
        base_ref,
        micro_data / "fashion_mnist/train/images",
        FinetuneOptions(
            task="image_classification",
            freeze_encoder=True,
            epochs=15,
            learning_rate=1e-3,
            early_stopping_patience=0,
            head="fashion",
            export_onnx=False,
        ),
        store_root=store.root,
    )
    assert result.reference is not None
    before = store.load(base_ref).load_model().encoder.state_dict()
    after_model = store.load(result.reference).load_model()
    for key, value in after_model.encoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert "fashion" in after_model.heads and "fashion" not in store.load(base_ref).heads.heads
    assert result.after is not None and result.steps == 15 * 5  # no early stopping: every epoch ran


def test_cancellation_raises_and_registers_nothing(micro_data: Path, base: tuple[ModelStore, str]) -> None:
    store, base_ref = base
    seen: list[int] = []
    with pytest.raises(Cancelled):
        run_finetune(
            base_ref,
            micro_data / "fashion_mnist/train/images",
            FinetuneOptions(task="image_classification", epochs=5, export_onnx=False),
            store_root=store.root,
            progress=lambda step, total, metrics: seen.append(step),
            should_cancel=lambda: len(seen) >= 3,
        )
    assert seen == [1, 2, 3]  # stopped at the next step
    assert store.versions("momo-test") == ["v1"]
    assert not [p for p in (store.root / "momo-test").iterdir() if p.name.startswith(".")]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_datasets_name_file_and_line(
    micro_data: Path, base: tuple[ModelStore, str], tmp_path: Path
) -> None:
    store, base_ref = base
    good = '{"text": "a fine day", "label": "weather"}'
    bad_json = _write(tmp_path / "bad.jsonl", [good, '{"text": "x", "label": "y"}', '{"text": "oops"'])
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:3: invalid JSON"):
        run_finetune(base_ref, bad_json, FinetuneOptions(task="text_classification"), store_root=store.root)
    missing = _write(tmp_path / "missing.jsonl", [good, '{"text": "no label here"}'])
    with pytest.raises(DataFormatError, match=r"missing\.jsonl:2: missing key 'label'"):
        run_finetune(base_ref, missing, FinetuneOptions(task="text_classification"), store_root=store.root)
    (tmp_path / "img.png").write_bytes(b"not a png at all")
    vqa = _write(
        tmp_path / "vqa.jsonl",
        [
            json.dumps({"image": str(p), "question": "what?", "answer": "x"})
            for p in sorted((micro_data / "shapes/train/images").glob("*.png"))[:2]
        ]
        + ['{"image": "img.png", "question": "what?", "answer": "y"}'],
    )
    with pytest.raises(DataFormatError, match=r"vqa\.jsonl:3: image img\.png cannot be read"):
        run_finetune(base_ref, vqa, FinetuneOptions(task="vqa"), store_root=store.root)
    with pytest.raises(FinetuneError, match="needs an image folder"):
        run_finetune(base_ref, bad_json, FinetuneOptions(task="image_classification"), store_root=store.root)
    assert store.versions("momo-test") == ["v1"]


def test_allowed_root_refuses_images_outside(
    micro_data: Path, base: tuple[ModelStore, str], tmp_path: Path
) -> None:
    store, base_ref = base
    root = tmp_path / "data_root"
    root.mkdir()
    outside = sorted((micro_data / "shapes/train/images").glob("*.png"))[0]
    pairs = _write(
        root / "pairs.jsonl",
        [json.dumps({"image": "../" * 12 + str(outside).lstrip("/"), "text": "a shape"})] * 3,
    )
    with pytest.raises(DataFormatError, match=r"pairs\.jsonl:1: image .* outside the allowed data root"):
        run_finetune(
            base_ref, pairs, FinetuneOptions(task="retrieval"), store_root=store.root, allowed_root=root
        )


def test_finetune_command(micro_data: Path, base: tuple[ModelStore, str]) -> None:
    import typer

    from training.finetune.cli import register

    store, base_ref = base
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps typer in sub-command mode
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "--task",
            "text_classification",
            "--model",
            base_ref,
            "--data",
            str(micro_data / "wordnet/train.jsonl"),
            "--epochs",
            "1",
            "--head",
            "topic",
            "--no-export",
            "--store",
            str(store.root),
            "--activate",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "registered momo-test:v2 (parent momo-test:v1)" in result.output
    assert store.active() == ("momo-test", "v2")
    bad = CliRunner().invoke(
        app, ["finetune", "--task", "nope", "--model", base_ref, "--data", "x", "--store", str(store.root)]
    )
    assert bad.exit_code == 1 and "unknown task" in bad.output

"""Exported graphs match eager torch: every format, every entry point, unseen batch sizes and lengths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from momo.artifact import Manifest, load_artifact, save_artifact
from momo.config import MoMoConfig
from momo.export import (
    EntryPoints,
    export_artifact,
    export_model,
    load_torch_program,
    parity_inputs,
    parity_report,
)
from momo.graphs import EXPORT_INFO_FILE, ONNX_DATA_FILES, ONNX_FILES, entry_outputs, format_files
from momo.heads import HeadSpec
from momo.model import MoMoModel
from momo.store import ModelStore
from momo.tokenizer import MoMoTokenizer
from tests.factories import random_model, register_random

FP32_FORMATS = ("onnx", "torchscript", "torch-export")
BATCH_SIZES = (1, 3, 17)
TOLERANCE = 1e-4


def model_with_all_heads(config: MoMoConfig, seed: int = 0) -> MoMoModel:
    """itm + vqa (pair), plus an image head and a text head, so every graph carries logits."""
    model = random_model(config, seed)
    torch.manual_seed(seed + 1)
    model.add_head("shape", HeadSpec(input="image", labels=["circle", "square", "triangle"]))
    model.add_head("topic", HeadSpec(input="text", labels=[f"t{i}" for i in range(5)], hidden=16))
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[MoMoModel, Path]:
    torch.set_num_threads(2)
    model = model_with_all_heads(_test_config())
    directory = tmp_path_factory.mktemp("export")
    export_model(
        model,
        directory,
        formats=["onnx", "onnx-int8", "torchscript", "torch-export"],
        weights_sha256="w",
        config_sha256="c",
    )
    return model, directory


def _test_config() -> MoMoConfig:
    from momo.config import get_preset

    return get_preset("momo-test")


class Runners:
    """Loaded programs per format, kept for the whole module (loading is the slow part)."""

    def __init__(self, directory: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.sessions = {
            fmt: {
                e: ort.InferenceSession(str(directory / f), options, providers=["CPUExecutionProvider"])
                for e, f in ONNX_FILES[fmt].items()
            }
            for fmt in ("onnx", "onnx-int8")
        }
        self.programs = {fmt: load_torch_program(directory, fmt) for fmt in ("torchscript", "torch-export")}

    def run(self, fmt: str, entry: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if fmt in self.sessions:
            session = self.sessions[fmt][entry]
            return list(
                session.run(None, {i.name: a for i, a in zip(session.get_inputs(), inputs, strict=True)})
            )
        with torch.inference_mode():
            values = getattr(self.programs[fmt], entry)(*[torch.from_numpy(a) for a in inputs])
        return [v.numpy() for v in values]


@pytest.fixture(scope="module")
def runners(exported: tuple[MoMoModel, Path]) -> Runners:
    return Runners(exported[1])


def _eager(model: MoMoModel, entry: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    with torch.inference_mode():
        values = getattr(EntryPoints(model).eval(), entry)(*[torch.from_numpy(a) for a in inputs])
    return [v.numpy() for v in values]


def _assert_same_argmax(name: str, got: np.ndarray, ref: np.ndarray) -> None:
    top2 = np.sort(ref, axis=-1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > TOLERANCE  # rows that are not a tie within tolerance
    assert decided.mean() > 0.5, f"{name}: too many near-ties to judge"
    np.testing.assert_array_equal(got.argmax(-1)[decided], ref.argmax(-1)[decided], err_msg=name)


@pytest.mark.parametrize("fmt", FP32_FORMATS)
@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("length", [1, 7, "max"])
def test_fp32_formats_match_eager(
    exported: tuple[MoMoModel, Path], runners: Runners, fmt: str, batch: int, length: int | str
) -> None:
    model, _ = exported
    n = model.config.max_text_len if length == "max" else int(length)
    inputs = parity_inputs(model.config, batch, n, seed=7)
    outputs = entry_outputs(model.head_specs)
    for entry in ("image", "text", "pair"):
        ref = _eager(model, entry, inputs[entry])
        got = runners.run(fmt, entry, inputs[entry])
        assert len(got) == len(outputs[entry])
        for name, r, g in zip(outputs[entry], ref, got, strict=True):
            assert g.shape == r.shape, f"{fmt} {entry}.{name}"
            diff = float(np.abs(g - r).max())
            assert diff <= TOLERANCE, f"{fmt} {entry}.{name} batch={batch} length={n}: max abs diff {diff}"
            if name.startswith("logits_"):
                _assert_same_argmax(f"{fmt} {entry}.{name}", g, r)
        if entry != "pair":
            np.testing.assert_allclose(np.linalg.norm(got[0], axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_int8_graphs_stay_close(exported: tuple[MoMoModel, Path], runners: Runners, batch: int) -> None:
    model, _ = exported
    inputs = parity_inputs(model.config, batch, model.config.max_text_len, seed=3)
    for entry in ("image", "text"):
        ref = _eager(model, entry, inputs[entry])[0]
        got = runners.run("onnx-int8", entry, inputs[entry])[0]
        cosine = (ref * got).sum(-1)  # both unit norm
        assert cosine.min() > 0.98, f"int8 {entry} cosine {cosine.min()}"


def test_graphs_are_valid_and_share_one_weight_file(exported: tuple[MoMoModel, Path]) -> None:
    import onnx

    model, directory = exported
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    for fmt in ("onnx", "onnx-int8"):
        locations = set()
        for name in ONNX_FILES[fmt].values():
            onnx.checker.check_model(str(directory / name))
            proto = onnx.load_model(str(directory / name), load_external_data=False)
            locations |= {
                entry.value
                for t in proto.graph.initializer
                for entry in t.external_data
                if entry.key == "location"
            }
        assert locations == {ONNX_DATA_FILES[fmt]}
    # three graphs over one transformer: the weights are stored once (plus alignment padding)
    data = (directory / ONNX_DATA_FILES["onnx"]).stat().st_size
    assert data <= 1.1 * param_bytes + 64 * 1024, (data, param_bytes)
    assert (directory / ONNX_DATA_FILES["onnx-int8"]).stat().st_size < data
    info = json.loads((directory / EXPORT_INFO_FILE).read_text())
    assert set(info["formats"]) == {"onnx", "onnx-int8", "torchscript", "torch-export"}
    assert info["formats"]["onnx"]["opset"] == 17
    for fmt, entry in info["formats"].items():
        assert set(entry["sha256"]) == set(format_files(fmt))


def test_parity_report_on_separate_towers(tmp_path: Path) -> None:
    """The FLAVA-style ablation arm exports too (different graph structure, same entry points)."""
    config = _test_config().replace(towers="separate")
    model = model_with_all_heads(config, seed=3)
    export_model(model, tmp_path, formats=["onnx", "torchscript"], weights_sha256="w", config_sha256="c")
    report = parity_report(model, tmp_path, ["onnx", "torchscript"], batch_sizes=(1, 5))
    for fmt, figures in report.items():
        assert figures["ok"], (fmt, figures)
        assert figures["max_abs_overall"] <= TOLERANCE
        assert figures["argmax_mismatch_beyond_tie"] == 0


def test_export_artifact_updates_manifest(tmp_path: Path, test_tokenizer: MoMoTokenizer) -> None:
    store = ModelStore(tmp_path / "store")
    info = register_random(store, _test_config(), test_tokenizer)
    before = set(load_artifact(info.path).manifest.files)
    report = export_artifact(info.path, int8=True, torchscript=True, check_parity=True, batch_sizes=(1, 3))
    assert report.parity_ok
    assert report.parity["onnx"]["max_abs_overall"] <= TOLERANCE
    artifact = load_artifact(info.path)  # re-verifies every hash, graphs included
    files = set(artifact.manifest.files)
    expected = {
        EXPORT_INFO_FILE,
        *format_files("onnx"),
        *format_files("onnx-int8"),
        *format_files("torchscript"),
    }
    assert expected <= files and before <= files
    assert "export" in artifact.manifest.notes
    assert not [p for p in info.path.iterdir() if p.name.startswith(".")]  # scratch removed

    # a second export of one format keeps the other formats' entries
    export_artifact(info.path, onnx=False, int8=False, torchscript=True)
    exported_info = json.loads((info.path / EXPORT_INFO_FILE).read_text())
    assert {"onnx", "onnx-int8", "torchscript"} <= set(exported_info["formats"])
    load_artifact(info.path)


def test_export_artifact_with_failed_parity_leaves_artifact_untouched(
    tmp_path: Path, test_tokenizer: MoMoTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import momo.export as export

    store = ModelStore(tmp_path / "store")
    info = register_random(store, _test_config(), test_tokenizer)
    files_before = sorted(p.name for p in info.path.iterdir())

    def failing(*args: Any, **kwargs: Any) -> dict[str, dict[str, Any]]:
        return {"onnx": {"ok": False, "max_abs_overall": 1.0, "argmax_agree": 0.0}}

    monkeypatch.setattr(export, "parity_report", failing)
    report = export_artifact(info.path, torchscript=False, check_parity=True)
    assert not report.parity_ok
    assert sorted(p.name for p in info.path.iterdir()) == files_before


def test_saved_artifact_roundtrip_keeps_heads(tmp_path: Path, test_tokenizer: MoMoTokenizer) -> None:
    """Image/text heads survive save -> export: their logits are graph outputs."""
    model = model_with_all_heads(_test_config())
    save_artifact(tmp_path / "a", model, test_tokenizer, Manifest(name="m", version="v1"))
    export_artifact(tmp_path / "a", torchscript=False)
    import onnx

    outputs = [
        o.name for o in onnx.load_model(str(tmp_path / "a" / ONNX_FILES["onnx"]["image"])).graph.output
    ]
    assert outputs == ["embedding", "cls", "logits_shape"]

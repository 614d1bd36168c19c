"""`momo export NAME:VERSION` end to end: graphs land in the artifact, its manifest lists them, and
the ONNX runtime then serves the version from those graphs (no cache export)."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from momo.artifact import load_artifact
from momo.runtime import load_runtime
from momo.store import ModelStore
from tests.factories import register_random
from training import export


def test_export_command_writes_graphs_into_the_artifact(tmp_path: Path, test_config, test_tokenizer) -> None:
    store = ModelStore(tmp_path / "store")
    info = register_random(store, test_config, test_tokenizer)
    app = typer.Typer()
    export.register(app)
    app.command("noop")(lambda: None)  # a second command keeps typer's sub-command parsing
    result = CliRunner().invoke(
        app, ["export", info.reference, "--store", str(store.root), "--no-torchscript"]
    )
    assert result.exit_code == 0, result.output
    assert "onnx" in result.output and "[ok]" in result.output
    artifact = load_artifact(info.path)  # the re-sealed manifest verifies
    assert {"image_encoder.onnx", "text_encoder.onnx", "pair_encoder.onnx"} <= set(artifact.manifest.files)
    runtime = load_runtime(artifact, "onnx", cache_dir=tmp_path / "cache")
    assert runtime.encode_texts(*_tokens(artifact)).shape == (1, test_config.embed_dim)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())

    missing = CliRunner().invoke(app, ["export", "momo-test:v9", "--store", str(store.root)])
    assert missing.exit_code != 0


def _tokens(artifact):
    batch = artifact.tokenizer.encode_batch(["a red circle"], artifact.config.max_text_len)
    return batch.input_ids, batch.attention_mask

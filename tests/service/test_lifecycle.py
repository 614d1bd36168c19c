"""Start-up paths: settings from the environment, the ONNX default runtime, an empty store, `momo serve`."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from momo.store import ModelStore
from service.settings import Settings
from tests.service.helpers import (
    LiveServer,
    assert_error,
    free_port,
    make_settings,
    momo_command,
    register_model,
)


def test_settings_come_from_momo_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOMO_API_KEYS", "alpha, beta")
    monkeypatch.setenv("MOMO_MAX_BATCH", "7")
    monkeypatch.setenv("MOMO_RUNTIME", "torch")
    monkeypatch.setenv("MOMO_IMAGE_URLS_ENABLED", "true")
    settings = Settings()
    assert [k.get_secret_value() for k in settings.api_keys] == ["alpha", "beta"]
    assert settings.max_batch == 7 and settings.runtime == "torch"
    assert settings.image_urls_enabled and settings.auth_enabled
    assert Settings(batching=False).effective_max_batch == 1
    monkeypatch.setenv("MOMO_AUTH_DISABLED", "true")
    monkeypatch.delenv("MOMO_API_KEYS")
    assert Settings().auth_enabled is False


def test_the_default_onnx_runtime_serves_the_same_embeddings(model_store: Path, tmp_path: Path) -> None:
    settings = make_settings(
        model_store, tmp_path / "data", runtime="onnx", runtime_cache_dir=tmp_path / "cache"
    )
    with LiveServer(settings) as live, live.client() as c:
        handle = live.engine.current
        assert handle.kind == "onnx"
        texts = ["a red circle", "a photo of an ankle boot"]
        got = np.asarray(
            [d["embedding"] for d in c.post("/v1/embeddings", json={"input": texts}).json()["data"]]
        )
        batch = handle.tokenizer.encode_batch(texts, max_length=handle.config.max_text_len)
        np.testing.assert_allclose(
            got, handle.runtime.encode_texts(batch.input_ids, batch.attention_mask), atol=1e-5
        )
        torch_model = ModelStore(model_store).load("momo-test:v1").load_model("cpu")
        import torch

        with torch.inference_mode():
            reference = torch_model.encoder.embed_text(
                torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
            ).numpy()
        np.testing.assert_allclose(got, reference, atol=1e-4)
        assert c.get("/ready").json()["runtime"] == "onnx"


def test_empty_store_keeps_serving_health_until_a_model_is_activated(
    tmp_path: Path, test_config: Any, test_tokenizer: Any
) -> None:
    root = tmp_path / "store"
    settings = make_settings(root, tmp_path / "data")
    with LiveServer(settings) as live, live.client() as c:
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert ready.status_code == 503 and "no model yet" in ready.json()["reason"]
        assert "make pretrain-default" in ready.json()["reason"]
        assert_error(c.post("/v1/embeddings", json={"input": "x"}), 503, "model_not_loaded")
        assert c.get("/v1/models").json()["data"] == []
        assert c.get("/v1/collections").json()["data"] == []
        # a model trained later is activated without a restart
        reference = register_model(ModelStore(root), test_config, test_tokenizer, seed=0)
        assert c.post(f"/v1/models/{reference}/activate").status_code == 200
        assert c.get("/ready").status_code == 200
        assert c.post("/v1/embeddings", json={"input": "x"}).status_code == 200


def test_momo_serve_help_lists_every_setting() -> None:
    from momo import cli

    cli._register_providers(["serve"])
    result = CliRunner().invoke(cli.app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for flag in (
        "--max-batch",
        "--api-keys",
        "--auth-disabled",
        "--model-store",
        "--max-body-bytes",
        "--image-urls-enabled",
        "--text-overflow",
        "--runtime",
        "--data-dir",
        "--ui-enabled",
    ):
        assert flag in result.output


def test_momo_serve_without_a_model_or_keys(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOMO_")}
    env.update({"MOMO_MODEL_STORE": str(tmp_path / "empty"), "MOMO_DATA_DIR": str(tmp_path / "data")})
    # no keys and auth not disabled: a clear message, no traceback
    refused = subprocess.run([*momo_command(), "serve"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "MOMO_AUTH_DISABLED" in refused.stderr and "Traceback" not in refused.stderr
    port = free_port()
    env["MOMO_AUTH_DISABLED"] = "true"
    proc = subprocess.Popen(
        [*momo_command(), "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 503
        assert httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": "x"}).status_code == 503
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=60)
    assert "no model yet — run `make pretrain-default`" in output
    assert "auth: OFF" in output
    assert f"playground: http://127.0.0.1:{port}/ui/" in output
    assert "Traceback" not in output
    shutil.rmtree(tmp_path / "data", ignore_errors=True)

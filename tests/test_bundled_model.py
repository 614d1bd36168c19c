"""The committed default model: complete, active, and good at what it was trained for — checked on
held-out shapes scenes (the test split's generator seed, never trained on), directly through the
ONNX runtime and end to end through the HTTP service."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest

from momo.config import get_preset
from momo.preprocess import preprocess_images
from momo.runtime import load_runtime
from momo.store import ModelStore
from tests.service.helpers import LiveServer, make_settings
from training.data.shapes_generation import SHAPES_SEEDS, generate_scenes, render_scene

REPO_STORE = Path(__file__).resolve().parents[1] / "model_store"
N_SCENES = 100


@pytest.fixture(scope="module")
def scenes():
    return list(generate_scenes(SHAPES_SEEDS["test"], N_SCENES))


def test_bundled_model_is_complete_active_and_small() -> None:
    store = ModelStore(REPO_STORE)
    assert store.active() == ("momo-tiny", "v2")
    artifact = store.load()  # verifies every sha256
    assert artifact.config == get_preset("momo-tiny")
    assert set(artifact.heads.heads) == {"itm", "vqa"}
    assert artifact.heads.token_head  # the MLM head, for the held-out MLM loss
    assert sum(f.stat().st_size for f in artifact.path.iterdir()) <= 25 * 2**20
    assert {"image_encoder.onnx", "text_encoder.onnx", "pair_encoder.onnx"} <= set(artifact.manifest.files)
    first = artifact.manifest.metrics["pretrain_first_losses"]
    final = artifact.manifest.metrics["pretrain_final_losses"]
    assert set(final) == {"images", "images_text", "text_pairs", "downstream"}
    for stage, losses in final.items():
        for name, value in losses.items():
            if name.endswith("/mlm") and stage != "images_text":
                # MLM learns in images_text; later stages keep it where it was left (+5 % at most)
                assert value <= 1.05 * final["images_text"]["text/mlm"], (stage, name)
            else:  # every other loss of every stage fell
                assert value < first[stage][name], (stage, name)
    assert "eval" in artifact.manifest.metrics


def test_v1_stays_loadable() -> None:
    artifact = ModelStore(REPO_STORE).load("momo-tiny:v1")
    assert not artifact.heads.token_head  # v1 predates the kept MLM head
    model = artifact.load_model()
    assert model.token_head is None and set(model.heads) == {"itm", "vqa"}


def test_zero_shot_text_to_image_retrieval_on_held_out_scenes(scenes) -> None:
    artifact = ModelStore(REPO_STORE).load()
    runtime = load_runtime(artifact, "onnx", threads=1)
    pixels = preprocess_images([render_scene(s) for s in scenes], artifact.config)
    batch = artifact.tokenizer.encode_batch([s.captions[0] for s in scenes], artifact.config.max_text_len)
    similarity = runtime.encode_texts(batch.input_ids, batch.attention_mask) @ runtime.encode_images(pixels).T
    order = np.argsort(-similarity, axis=1)
    recall_at_1 = float(np.mean(order[:, 0] == np.arange(N_SCENES)))
    recall_at_5 = float(np.mean([i in order[i, :5] for i in range(N_SCENES)]))
    chance = 1 / N_SCENES
    assert recall_at_1 >= 30 * chance, recall_at_1  # measured 0.59
    assert recall_at_5 >= 0.7, recall_at_5  # measured 0.98


def _png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_service_on_the_bundled_model_finds_scenes_and_answers(scenes, tmp_path: Path) -> None:
    settings = make_settings(REPO_STORE, tmp_path, runtime="onnx", runtime_cache_dir=tmp_path / "cache")
    subset = scenes[:40]
    with LiveServer(settings) as server, server.client() as client:
        models = client.get("/v1/models").json()["data"]
        assert any(m.get("active") and m["id"].startswith("momo-tiny") for m in models)
        assert client.post("/v1/collections", json={"name": "scenes"}).status_code == 201
        items = [{"id": f"s{i}", "image": _png(render_scene(s))} for i, s in enumerate(subset)]
        added = client.post("/v1/collections/scenes/items", json={"items": items})
        assert added.status_code == 200, added.text
        hits_at_5 = 0
        for i, scene in enumerate(subset):
            found = client.post(
                "/v1/collections/scenes/search", json={"query": scene.captions[0], "top_k": 5}
            ).json()["data"]
            hits_at_5 += f"s{i}" in [h["id"] for h in found]
        assert hits_at_5 / len(subset) >= 0.6, hits_at_5  # chance: 5/40

        # VQA: counting questions are answered with numbers, mostly right.
        right = 0
        for scene in subset:
            answer = client.post(
                "/v1/vqa", json={"image": _png(render_scene(scene)), "question": "how many shapes are there?"}
            ).json()["answers"][0]["answer"]
            assert answer in {"1", "2", "3", "4"}
            right += answer == str(len(scene.objects))
        assert right / len(subset) >= 0.4, right  # majority answer: about 0.25

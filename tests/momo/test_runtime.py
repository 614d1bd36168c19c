"""The inference runtimes: load from a store reference, agree with each other, export into a cache."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from momo.artifact import Artifact, Manifest, load_artifact, save_artifact
from momo.config import MoMoConfig, get_preset
from momo.export import export_artifact
from momo.graphs import EXPORT_INFO_FILE, ONNX_FILES, weights_sha256
from momo.heads import HeadSpec
from momo.runtime import Runtime, RuntimeLoadError, export_with_torch, load_runtime
from momo.store import ModelStore, VersionInfo
from momo.tokenizer import MoMoTokenizer
from tests.factories import VQA_ANSWERS, random_model

TEXTS = [
    "a red circle to the left of a blue square",
    "how many shapes are there",
    "a photo of a sneaker",
    "the quick brown fox jumps over the lazy dog and then some more words to truncate it",
    "x",
]


def _register(store: ModelStore, config: MoMoConfig, tokenizer: MoMoTokenizer) -> VersionInfo:
    """A random artifact with heads of every input kind (itm, vqa, an image and a text head)."""
    model = random_model(config, seed=0)
    model.add_head("shape", HeadSpec(input="image", labels=["circle", "square", "triangle"]))
    model.add_head("topic", HeadSpec(input="text", labels=["a", "b", "c", "d"]))

    def write(directory: Path, version: str) -> None:
        save_artifact(directory, model, tokenizer, Manifest(name="momo-test", version=version))

    info = store.register("momo-test", write)
    store.activate(info.reference)
    return info


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, test_tokenizer: MoMoTokenizer) -> dict[str, object]:
    root = tmp_path_factory.mktemp("runtime")
    store = ModelStore(root / "store")
    info = _register(store, get_preset("momo-test"), test_tokenizer)
    cache = root / "cache"
    runtimes: dict[str, Runtime] = {
        "eager": load_runtime(info.reference, "torch", store=store, threads=2, cache_dir=cache),
        "torchscript": load_runtime(info.reference, "torch", store=store, torchscript=True, cache_dir=cache),
        "onnx": load_runtime(info.reference, "onnx", store=store, threads=2, cache_dir=cache),
    }
    return {"store": store, "info": info, "cache": cache, "runtimes": runtimes}


def _inputs(runtime: Runtime, batch: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    config = runtime.artifact.config
    rng = np.random.default_rng(batch)
    pixels = rng.standard_normal((batch, 3, config.image_size, config.image_size)).astype(np.float32)
    texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
    tokens = runtime.artifact.tokenizer.encode_batch(texts, max_length=config.max_text_len)
    return pixels, tokens.input_ids, tokens.attention_mask


def test_runtimes_load_from_store_reference(setup: dict) -> None:
    runtimes = setup["runtimes"]
    assert (runtimes["eager"].kind, runtimes["eager"].device) == ("torch", "cpu")
    assert runtimes["torchscript"].describe()["program"] == "torchscript"
    assert (runtimes["onnx"].kind, runtimes["onnx"].device) == ("onnx", "cpu")
    for runtime in runtimes.values():
        assert runtime.artifact.reference == setup["info"].reference
        assert runtime.head_names == ["itm", "shape", "topic", "vqa"]
        runtime.warmup()  # idempotent, runs every entry point


@pytest.mark.parametrize("batch", [1, 5])
def test_runtimes_agree_on_every_method(setup: dict, batch: int) -> None:
    runtimes = setup["runtimes"]
    eager = runtimes["eager"]
    pixels, ids, mask = _inputs(eager, batch)
    for name in ("torchscript", "onnx"):
        runtime = runtimes[name]
        pairs = [
            (runtime.encode_images(pixels), eager.encode_images(pixels)),
            (runtime.encode_texts(ids, mask), eager.encode_texts(ids, mask)),
            (runtime.image_features(pixels), eager.image_features(pixels)),
            (runtime.text_features(ids, mask), eager.text_features(ids, mask)),
            (runtime.pair_features(pixels, ids, mask), eager.pair_features(pixels, ids, mask)),
            (runtime.score_pairs(pixels, ids, mask), eager.score_pairs(pixels, ids, mask)),
            (runtime.head_logits("shape", pixels=pixels), eager.head_logits("shape", pixels=pixels)),
            (
                runtime.head_logits("topic", input_ids=ids, attention_mask=mask),
                eager.head_logits("topic", input_ids=ids, attention_mask=mask),
            ),
            (runtime.head_logits("vqa", pixels, ids, mask), eager.head_logits("vqa", pixels, ids, mask)),
        ]
        for i, (got, ref) in enumerate(pairs):
            assert got.dtype == np.float32 and got.shape == ref.shape, (name, i)
            np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=f"{name} output {i}")
        answers, ref_answers = (
            runtime.answer(pixels, ids, mask, top_k=3),
            eager.answer(pixels, ids, mask, top_k=3),
        )
        assert len(answers) == batch and all(len(a) == 3 for a in answers)
        for row, ref_row in zip(answers, ref_answers, strict=True):
            assert all(label in VQA_ANSWERS for label, _ in row)
            np.testing.assert_allclose([p for _, p in row], [p for _, p in ref_row], atol=1e-4)
    embeddings = eager.encode_images(pixels)
    assert embeddings.shape == (batch, eager.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, atol=1e-5)
    scores = eager.score_pairs(pixels, ids, mask)
    assert scores.shape == (batch,) and ((scores >= 0) & (scores <= 1)).all()


def test_cache_export_when_artifact_has_no_graphs(setup: dict) -> None:
    info, cache = setup["info"], setup["cache"]
    artifact = load_artifact(info.path)
    # the runtimes above exported into <cache>/<sha256 of weights>/, never into the artifact
    target = cache / weights_sha256(artifact)
    assert (target / EXPORT_INFO_FILE).is_file()
    assert set(json.loads((target / EXPORT_INFO_FILE).read_text())["formats"]) >= {"onnx", "torchscript"}
    assert not (info.path / EXPORT_INFO_FILE).exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp dirs left
    # a second load reuses the cache (nothing re-exported)
    stamp = (target / ONNX_FILES["onnx"]["image"]).stat().st_mtime_ns
    runtime = load_runtime(info.reference, "onnx", store=setup["store"], cache_dir=cache, warmup=False)
    assert runtime.describe()["graphs"] == str(target)
    assert (target / ONNX_FILES["onnx"]["image"]).stat().st_mtime_ns == stamp


def test_the_exporter_is_passed_in(tmp_path: Path, setup: dict) -> None:
    """Missing graphs are exported by the exporter the caller passes; with none, a clear error."""
    info, cache = setup["info"], setup["cache"]
    with pytest.raises(RuntimeLoadError, match="momo export"):
        load_runtime(info.path, "onnx", cache_dir=tmp_path / "empty", exporter=None, warmup=False)
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").iterdir())
    # graphs already in the cache need no exporter at all
    runtime = load_runtime(info.path, "onnx", cache_dir=cache, exporter=None, warmup=False)
    assert runtime.describe()["graphs"] == str(cache / weights_sha256(runtime.artifact))
    calls: list[tuple[Path, list[str]]] = []

    def exporter(artifact: Artifact, directory: Path, formats: Sequence[str]) -> None:
        calls.append((directory, list(formats)))
        export_with_torch(artifact, directory, formats)

    load_runtime(info.path, "onnx", cache_dir=tmp_path / "spy", exporter=exporter, warmup=False)
    assert [formats for _, formats in calls] == [["onnx"]]
    assert calls[0][0].parent == tmp_path / "spy"  # a temp directory, renamed into place after


def test_corrupt_cache_entry_is_rebuilt(tmp_path: Path, setup: dict) -> None:
    info = setup["info"]
    cache = tmp_path / "cache"
    first = load_runtime(info.path, "onnx", cache_dir=cache, warmup=False)
    graph = Path(first.describe()["graphs"]) / ONNX_FILES["onnx"]["text"]
    first.close()
    graph.write_bytes(b"garbage")
    runtime = load_runtime(info.path, "onnx", cache_dir=cache)
    _, ids, mask = _inputs(runtime)
    np.testing.assert_allclose(
        runtime.encode_texts(ids, mask), setup["runtimes"]["eager"].encode_texts(ids, mask), atol=1e-4
    )


def test_cache_dir_from_environment(tmp_path: Path, setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOMO_CACHE_DIR", str(tmp_path / "env-cache"))
    runtime = load_runtime(setup["info"].path, "onnx", warmup=False)
    assert Path(runtime.describe()["graphs"]).parent == tmp_path / "env-cache"


def test_graphs_in_the_artifact_are_used(tmp_path: Path, test_tokenizer: MoMoTokenizer) -> None:
    store = ModelStore(tmp_path / "store")
    info = _register(store, get_preset("momo-test"), test_tokenizer)
    export_artifact(info.path, int8=True, torchscript=True)
    cache = tmp_path / "cache"
    onnx_rt = load_runtime("momo-test", "onnx", store=store, cache_dir=cache)
    int8_rt = load_runtime(None, "onnx-int8", store=store, cache_dir=cache)  # the active model
    script_rt = load_runtime("momo-test:v1", "torchscript", store=store, cache_dir=cache)
    assert onnx_rt.describe()["graphs"] == str(info.path)
    assert int8_rt.kind == "onnx-int8" and int8_rt.describe()["graphs"] == str(info.path)
    assert script_rt.kind == "torch" and script_rt.describe()["program"] == "torchscript"
    assert not cache.exists()
    pixels, ids, mask = _inputs(onnx_rt, 4)
    ref = onnx_rt.encode_images(pixels)
    assert ((int8_rt.encode_images(pixels) * ref).sum(-1) > 0.98).all()
    np.testing.assert_allclose(script_rt.encode_images(pixels), ref, atol=1e-4)
    assert int8_rt.answer(pixels, ids, mask, top_k=1)[0][0][0] in VQA_ANSWERS


def test_input_validation_and_empty_batches(setup: dict) -> None:
    for runtime in setup["runtimes"].values():
        config = runtime.artifact.config
        pixels, ids, mask = _inputs(runtime, 2)
        with pytest.raises(ValueError, match="pixels"):
            runtime.encode_images(pixels[:, :, :8])
        with pytest.raises(ValueError, match="text length"):
            long = np.ones((2, config.max_text_len + 1), dtype=np.int64)
            runtime.encode_texts(long, long)
        with pytest.raises(ValueError, match="vocabulary"):
            runtime.encode_texts(ids + config.vocab_size, mask)
        with pytest.raises(ValueError, match="attended"):
            runtime.encode_texts(ids, np.zeros_like(mask))
        with pytest.raises(ValueError, match="images but"):
            runtime.score_pairs(pixels[:1], ids, mask)
        with pytest.raises(KeyError, match="no head"):
            runtime.head_logits("nope", pixels=pixels)
        with pytest.raises(ValueError, match="pixels are required"):
            runtime.head_logits("vqa", input_ids=ids, attention_mask=mask)
        empty = np.zeros((0, 3, config.image_size, config.image_size), dtype=np.float32)
        no_text = np.zeros((0, 0), dtype=np.int64)
        assert runtime.encode_images(empty).shape == (0, config.embed_dim)
        assert runtime.encode_texts(no_text, no_text).shape == (0, config.embed_dim)
        assert runtime.score_pairs(empty, no_text, no_text).shape == (0,)
        assert runtime.answer(empty, no_text, no_text) == []
        # float64 pixels and int32 ids are accepted (converted)
        assert runtime.encode_texts(ids.astype(np.int32), mask.astype(np.int32)).shape == (
            2,
            config.embed_dim,
        )
        assert runtime.encode_images(pixels.astype(np.float64)).dtype == np.float32


def test_unknown_kind_and_missing_cuda(setup: dict) -> None:
    with pytest.raises(ValueError, match="unknown runtime kind"):
        load_runtime(setup["info"].path, "tensorrt")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeLoadError, match="cuda"):
            load_runtime(setup["info"].path, "torch", device="cuda")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeLoadError, match="cuda"):
            load_runtime(setup["info"].path, "onnx", device="cuda", cache_dir=setup["cache"])


def test_model_without_heads(tmp_path: Path, test_tokenizer: MoMoTokenizer) -> None:
    model = random_model(get_preset("momo-test"), with_heads=False)
    save_artifact(tmp_path / "bare", model, test_tokenizer, Manifest(name="bare", version="v1"))
    runtime = load_runtime(tmp_path / "bare", "onnx", cache_dir=tmp_path / "cache")
    pixels, ids, mask = _inputs(runtime, 2)
    assert runtime.encode_images(pixels).shape == (2, 16)
    with pytest.raises(KeyError, match="ITM"):
        runtime.score_pairs(pixels, ids, mask)
    with pytest.raises(KeyError, match="VQA"):
        runtime.answer(pixels, ids, mask)
    assert os.listdir(tmp_path / "cache")


def test_all_outputs_in_one_pass(setup: dict) -> None:
    for runtime in setup["runtimes"].values():
        pixels, ids, mask = _inputs(runtime, 3)
        image = runtime.image_outputs(pixels)
        assert list(image) == ["embedding", "cls", "logits_shape"]
        np.testing.assert_allclose(image["embedding"], runtime.encode_images(pixels), atol=1e-6)
        np.testing.assert_allclose(image["cls"], runtime.image_features(pixels), atol=1e-6)
        text = runtime.text_outputs(ids, mask)
        assert list(text) == ["embedding", "cls", "logits_topic"]
        pair = runtime.pair_outputs(pixels, ids, mask)
        assert list(pair) == ["cls", "logits_itm", "logits_vqa"]
        assert pair["logits_vqa"].shape == (3, len(VQA_ANSWERS))
        empty = runtime.image_outputs(pixels[:0])
        assert {k: v.shape for k, v in empty.items()} == {
            "embedding": (0, 16),
            "cls": (0, 32),
            "logits_shape": (0, 3),
        }

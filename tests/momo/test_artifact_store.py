from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from momo.artifact import ArtifactError, Manifest, load_artifact, save_artifact, update_manifest
from momo.store import ModelStore, StoreError
from tests.factories import random_model, register_random


def test_artifact_round_trip(tmp_path: Path, test_config, test_tokenizer) -> None:
    model = random_model(test_config, seed=3)
    manifest = save_artifact(tmp_path / "a", model, test_tokenizer, Manifest(name="m", version="v1"))
    assert set(manifest.files) == {"config.json", "model.safetensors", "tokenizer.json", "heads.json"}
    artifact = load_artifact(tmp_path / "a")
    assert artifact.config == test_config
    assert artifact.heads.heads["vqa"].labels == model.head_specs["vqa"].labels
    loaded = artifact.load_model()
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    update_manifest(tmp_path / "a", metrics={"probe": 0.5})
    assert load_artifact(tmp_path / "a").manifest.metrics == {"probe": 0.5}


def test_corrupt_or_incomplete_artifact_refused(tmp_path: Path, test_config, test_tokenizer) -> None:
    model = random_model(test_config)
    save_artifact(tmp_path / "a", model, test_tokenizer, Manifest(name="m"))
    weights = tmp_path / "a" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model.safetensors is corrupt"):
        load_artifact(tmp_path / "a")

    save_artifact(tmp_path / "b", model, test_tokenizer, Manifest(name="m"))
    (tmp_path / "b" / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match=r"tokenizer.json listed in the manifest is missing"):
        load_artifact(tmp_path / "b")

    save_artifact(tmp_path / "c", model, test_tokenizer, Manifest(name="m"))
    (tmp_path / "c" / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        load_artifact(tmp_path / "c")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nowhere")


def test_store_register_list_activate_resolve(store_root: Path, test_config, test_tokenizer) -> None:
    store = ModelStore(store_root)
    with pytest.raises(StoreError, match="no active model"):
        store.resolve()
    v1 = register_random(store, test_config, test_tokenizer, seed=1)
    v2 = register_random(store, test_config, test_tokenizer, seed=2, activate=False)
    assert (v1.version, v2.version) == ("v1", "v2")
    assert [i.reference for i in store.list()] == ["momo-test:v1", "momo-test:v2"]
    assert [i.active for i in store.list()] == [True, False]
    assert store.resolve() == store_root / "momo-test" / "v1"
    assert store.resolve("momo-test") == store_root / "momo-test" / "v1"  # the active one
    assert store.resolve("momo-test:v2") == store_root / "momo-test" / "v2"
    assert store.locate(str(store_root / "momo-test" / "v2")) == store_root / "momo-test" / "v2"
    assert store.locate("momo-test:v2") == store.resolve("momo-test:v2")
    store.activate("momo-test:v2")
    assert json.loads((store_root / "active.json").read_text()) == {"name": "momo-test", "version": "v2"}
    assert store.load().manifest.version == "v2"
    with pytest.raises(StoreError, match="no version"):
        store.resolve("momo-test:v9")
    with pytest.raises(StoreError, match="no model named"):
        store.resolve("other")


BAD_REFERENCES = [
    "momo-test:..",
    "momo-test:.",
    "..",
    ".",
    "momo-test/v1",
    "momo-test:v1/..",
    "../momo-test",
    "momo-test:v1\x00",
    "momo-test\x00:v1",
    "x:",
    ":v1",
    "a:b:c",
    "momo-test:latest",
    "-momo",
    "m" * 65,
]


@pytest.mark.parametrize("reference", BAD_REFERENCES)
def test_resolve_checks_the_reference_grammar(
    store_root: Path, test_config, test_tokenizer, reference: str
) -> None:
    """`..`, `.`, slashes and NUL never reach the file system (`momo-test:..` used to resolve to the
    store root, `momo-test:.` to the model folder); the messages name no server path."""
    store = ModelStore(store_root)
    register_random(store, test_config, test_tokenizer)
    for operation in (store.resolve, store.activate):
        with pytest.raises(StoreError, match="not a model reference") as excinfo:
            operation(reference)
        assert str(store_root) not in str(excinfo.value)
    assert store.active() == ("momo-test", "v1")


def test_reference_grammar_and_messages_without_paths(store_root: Path, test_config, test_tokenizer) -> None:
    from momo.store import InvalidReference, parse_reference

    assert parse_reference("momo-test") == ("momo-test", None)
    assert parse_reference("momo-test:v12") == ("momo-test", "v12")
    assert parse_reference("m.1_a-b:v1") == ("m.1_a-b", "v1")
    with pytest.raises(InvalidReference):
        parse_reference("momo-test:..")
    store = ModelStore(store_root)
    for reference in (None, "ghost", "ghost:v1"):
        with pytest.raises(StoreError) as excinfo:
            store.resolve(reference)
        assert str(store_root) not in str(excinfo.value), excinfo.value


def test_failed_registration_leaves_nothing(store_root: Path) -> None:
    store = ModelStore(store_root)

    def broken(directory: Path, version: str) -> None:
        (directory / "config.json").write_text("{}")
        raise RuntimeError("training crashed")

    with pytest.raises(RuntimeError):
        store.register("m", broken)
    assert store.versions("m") == []
    assert list((store_root / "m").iterdir()) == []


def test_concurrent_registration_does_not_corrupt(store_root: Path, test_config, test_tokenizer) -> None:
    store = ModelStore(store_root)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            register_random(ModelStore(store_root), test_config, test_tokenizer, seed=seed, activate=False)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    versions = store.versions("momo-test")
    assert versions == [f"v{i}" for i in range(1, 7)]
    seeds = set()
    for version in versions:
        artifact = load_artifact(store_root / "momo-test" / version)  # every one verifies
        assert artifact.manifest.version == version
        seeds.add(artifact.manifest.recipe["seed"])
    assert seeds == set(range(6))

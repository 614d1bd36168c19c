"""Service fixtures: a session model store with random `momo-test` versions, a live server per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from momo.store import ModelStore
from tests.service.helpers import LiveServer, make_settings, register_model


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory, test_config: Any, test_tokenizer: Any) -> Path:
    """momo-test:v1 (active) and momo-test:v2 (another seed), plus momo-bare:v1 without heads."""
    root = tmp_path_factory.mktemp("service-store") / "model_store"
    store = ModelStore(root)
    register_model(store, test_config, test_tokenizer, seed=0, activate=True)
    register_model(store, test_config, test_tokenizer, seed=1)
    register_model(
        store, test_config, test_tokenizer, seed=2, name="momo-bare", extra_heads=False, with_heads=False
    )
    return root


@pytest.fixture(scope="module")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One live server per test module (model momo-test:v1, auth on, small limits)."""
    settings = make_settings(
        model_store,
        tmp_path_factory.mktemp("service-data"),
        max_items_per_request=16,
        max_image_bytes=64 * 1024,
        max_image_pixels=512 * 512,
        max_body_bytes=1024 * 1024,
    )
    with LiveServer(settings) as live:
        yield live


@pytest.fixture()
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c

"""A short schemathesis run over the app's own /openapi.json against a live server on loopback (a
random `momo-test` model, auth on): a few generated requests per operation, and none may answer 5xx.
Schema-conformance checks are left to the other tests; this one is about robustness."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.service.helpers import API_KEY, LiveServer, make_settings


@pytest.fixture(scope="module")
def fuzzed(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server of its own, on a copy of the store (an activation by chance must not touch others)."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(model_store, root / "store")
    settings_ = make_settings(root / "store", root / "data", max_body_bytes=1024 * 1024, job_worker="off")
    with LiveServer(settings_) as live:
        yield live


def test_no_operation_answers_5xx(fuzzed: LiveServer) -> None:
    """Every operation of the schema, 5 generated cases each (seeded), auth on: no 5xx."""
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [o.label for o in operations]
    for operation in operations:

        @settings(
            max_examples=5,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
            case.validate_response(response, checks=[not_a_server_error])

        try:
            call()
        except Exception as exc:  # a check failure (or a crash): collected, every operation runs
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_the_fuzzed_server_still_serves(fuzzed: LiveServer) -> None:
    with fuzzed.client() as c:
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200
        assert c.post("/v1/embeddings", json={"input": "after the fuzzing"}).status_code == 200

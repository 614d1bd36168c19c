"""`runtime=auto`: every available runtime timed at warm-up, the fastest within parity served, the
choice reported by /v1/models and measured once per data_dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import runtime_choice
from service.runtime_choice import Measured, pick
from tests.service.helpers import LiveServer, make_settings


def test_pick_takes_the_fastest_within_tolerance() -> None:
    measured = {
        "onnx": Measured(10.0, 10.0, 0.0),
        "onnx-int8": Measured(2.0, 2.0, 0.05),  # fastest, but outside parity
        "torchscript": Measured(7.0, 9.0, 1e-5),
        "torch": Measured(12.0, 11.0, 1e-6),
    }
    chosen, dropped = pick(measured, tolerance=2e-3)
    assert chosen == "torchscript"
    assert list(dropped) == ["onnx-int8"] and "outside parity" in dropped["onnx-int8"]
    with pytest.raises(RuntimeError):
        pick({"x": Measured(1.0, 1.0, 1.0)}, tolerance=1e-3)


def test_auto_serves_the_measured_winner_and_reports_it(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(model_store, tmp_path, runtime="auto", max_batch=8)
    with LiveServer(settings) as live, live.client() as c:
        card = next(m for m in c.get("/v1/models").json()["data"] if m["serving"])
        selection = card["runtime_selection"]
        assert selection["mode"] == "auto" and card["runtime"] == selection["chosen"]
        candidates = selection["candidates"]
        assert {"onnx", "torch"} <= set(candidates)  # the bundled backends are always there
        assert "onnx-int8" in selection["skipped"]  # the test artifact ships no int8 graphs
        within = {k: v for k, v in candidates.items() if v["max_diff"] <= selection["tolerance"]}
        assert selection["chosen"] == min(within, key=lambda k: within[k]["total_ms"])
        assert candidates["onnx"]["max_diff"] == 0.0  # the reference
        assert c.post("/v1/embeddings", json={"input": "auto"}).status_code == 200
        assert live.engine.current.kind == selection["chosen"]

    # another process on the same data_dir (a second worker) takes the recorded choice
    def no_measuring(*args: object, **kwargs: object) -> None:
        raise AssertionError("measured twice")

    monkeypatch.setattr(runtime_choice, "measure", no_measuring)
    with LiveServer(settings) as again, again.client() as c:
        card = next(m for m in c.get("/v1/models").json()["data"] if m["serving"])
        assert card["runtime_selection"] == selection

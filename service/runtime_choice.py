"""`--runtime auto`: time every available runtime at warm-up and serve the fastest within parity.

Candidates, in this order: ONNX Runtime fp32 (the reference for parity), ONNX int8 (only where the
artifact ships int8 graphs: quantising at start-up is not free), TorchScript and torch eager. Each
is loaded and warmed up, then timed on a text batch and an image batch of `max_batch` items (the
median of a few runs, since a batch under load is `max_batch` items); its embeddings are compared
with the reference's. The fastest (text + image time) whose embeddings stay within
`runtime_auto_tolerance` (max absolute difference of the unit vectors) of the reference is kept;
the others are closed.

Several workers (or replicas on one data_dir) measure once: the first writes the report to
`<data_dir>/runtime-choice.json` under a file lock, keyed by the artifact's weights, the device,
threads and batch size, and the others load its choice directly (the measurement of one process is
not disturbed by its siblings measuring at the same time). `/v1/models` shows the report.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.json_files import read_json_object

log = logging.getLogger("momo.service.runtime")

CANDIDATES = ("onnx", "onnx-int8", "torchscript", "torch")
CHOICE_FILE = "runtime-choice.json"
RUNS = 5


@dataclass
class Measured:
    text_ms: float
    image_ms: float
    max_diff: float  # against the reference's embeddings

    @property
    def total_ms(self) -> float:
        return self.text_ms + self.image_ms


@dataclass
class Choice:
    chosen: str
    batch: int
    tolerance: float
    measured: dict[str, Measured] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not timed / not kept
    measured_by: int = 0  # pid

    def report(self) -> dict[str, Any]:
        return {
            "mode": "auto",
            "chosen": self.chosen,
            "batch": self.batch,
            "tolerance": self.tolerance,
            "candidates": {
                k: {**asdict(v), "total_ms": round(v.total_ms, 3)} for k, v in self.measured.items()
            },
            "skipped": self.skipped,
            "measured_by": self.measured_by,
        }

    @classmethod
    def from_report(cls, data: dict[str, Any]) -> Choice:
        measured = {
            k: Measured(float(v["text_ms"]), float(v["image_ms"]), float(v["max_diff"]))
            for k, v in data.get("candidates", {}).items()
        }
        return cls(
            str(data["chosen"]),
            int(data["batch"]),
            float(data["tolerance"]),
            measured,
            dict(data.get("skipped", {})),
            int(data.get("measured_by", 0)),
        )


def pick(measured: dict[str, Measured], tolerance: float) -> tuple[str, dict[str, str]]:
    """The fastest candidate within `tolerance` of the reference; (name, why others were dropped)."""
    dropped = {
        name: f"outside parity: max |diff| {m.max_diff:.2e} > {tolerance:.0e}"
        for name, m in measured.items()
        if m.max_diff > tolerance
    }
    within = {name: m for name, m in measured.items() if name not in dropped}
    if not within:
        raise RuntimeError("no runtime candidate is within parity tolerance")
    return min(within, key=lambda name: within[name].total_ms), dropped


def _probe(artifact: Any, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded text batch (half the text length, real-looking ids) and image batch."""
    config = artifact.config
    rng = np.random.default_rng(0)
    length = max(2, config.max_text_len // 2)
    ids = rng.integers(5, config.vocab_size, size=(batch, length), dtype=np.int64)
    mask = np.ones_like(ids)
    shape = (batch, config.num_channels, config.image_size, config.image_size)
    pixels = rng.standard_normal(shape).astype(np.float32)
    return ids, mask, pixels


def _time(fn: Callable[[], Any]) -> float:
    runs = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(runs)


def ships_int8(artifact: Any) -> bool:
    from momo.graphs import format_files

    return all(name in artifact.manifest.files for name in format_files("onnx-int8"))


def measure(load: Callable[[str], Any], artifact: Any, batch: int, tolerance: float) -> tuple[Any, Choice]:
    """Load, time and compare every candidate; returns (the chosen runtime, still open; the choice)."""
    ids, mask, pixels = _probe(artifact, batch)
    measured: dict[str, Measured] = {}
    skipped: dict[str, str] = {}
    reference: tuple[np.ndarray, np.ndarray] | None = None
    best: tuple[str, Any] | None = None
    for name in CANDIDATES:
        if name == "onnx-int8" and not ships_int8(artifact):
            skipped[name] = "the artifact ships no int8 graphs"
            continue
        try:
            runtime = load(name)
        except Exception as exc:  # a backend missing or unable to export: not a candidate
            skipped[name] = f"cannot load: {exc}"
            log.info("runtime auto: %s unavailable (%s)", name, exc)
            continue
        text = runtime.encode_texts(ids, mask)
        image = runtime.encode_images(pixels)
        if reference is None:
            reference = (text, image)
        diff = float(max(np.abs(text - reference[0]).max(), np.abs(image - reference[1]).max()))
        measured[name] = Measured(
            _time(lambda: runtime.encode_texts(ids, mask)),  # noqa: B023 (called right here)
            _time(lambda: runtime.encode_images(pixels)),  # noqa: B023
            diff,
        )
        chosen, _ = pick(measured, tolerance)
        if best is None or chosen == name:
            if best is not None:
                best[1].close()
            best = (name, runtime)
        else:
            runtime.close()
    if best is None:
        raise RuntimeError(f"runtime auto: no runtime could be loaded ({skipped})")
    chosen, dropped = pick(measured, tolerance)
    skipped.update(dropped)
    return best[1], Choice(chosen, batch, tolerance, measured, skipped, os.getpid())


def choose(
    load: Callable[[str], Any], artifact: Any, *, batch: int, tolerance: float, key: str, data_dir: Path
) -> tuple[Any, Choice]:
    """The runtime `auto` serves, measured once per key across processes (see the module doc)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / CHOICE_FILE
    with (data_dir / (CHOICE_FILE + ".lock")).open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            known = read_json_object(path).get(key)
            if isinstance(known, dict):
                try:
                    choice = Choice.from_report(known)
                    runtime = load(choice.chosen)
                    return runtime, choice
                except Exception as exc:  # the recorded winner cannot load here any more: measure again
                    log.warning("runtime auto: recorded choice unusable (%s); measuring again", exc)
            runtime, choice = measure(load, artifact, batch, tolerance)
            reports = read_json_object(path)
            reports[key] = choice.report()
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(reports, indent=2))
            tmp.replace(path)
            timings = ", ".join(f"{k} {m.total_ms:.1f} ms" for k, m in choice.measured.items())
            log.info("runtime auto: %s (batch %d: %s)", choice.chosen, batch, timings)
            return runtime, choice
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

"""Features of every runtime (the model and its random-weights twin) in one pass over the data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from momo.artifact import Artifact
from momo.runtime import Runtime
from training.evaluation.common import EvalSettings, batches


class Extractor:
    def __init__(self, runtimes: dict[str, Runtime], settings: EvalSettings):
        self.runtimes = runtimes
        self.settings = settings
        any_runtime = next(iter(runtimes.values()))
        self.artifact: Artifact = any_runtime.artifact
        self.config = self.artifact.config

    def _bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, leave=False, disable=not self.settings.progress, unit="item")

    def load_pixels(self, paths: Sequence[Path], raw: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Preprocessed (B, C, H, W) pixels, plus (B, 784) raw grayscale 28×28 pixels in [0, 1] if asked."""
        from momo.preprocess import load_image_file, preprocess_images

        images = [load_image_file(p) for p in paths]
        pixels = preprocess_images(images, self.config)
        raw_pixels = None
        if raw:
            raw_pixels = np.stack(
                [
                    np.asarray(im.convert("L").resize((28, 28)), dtype=np.float32).reshape(-1) / 255.0
                    for im in images
                ]
            )
        return pixels, raw_pixels

    def images(
        self, paths: Sequence[Path], desc: str, raw: bool = False
    ) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray | None]:
        """{runtime name: {"embedding": (N, E), "cls": (N, D)}} and optional raw pixels (N, 784)."""
        outs: dict[str, dict[str, list[np.ndarray]]] = {
            n: {"embedding": [], "cls": []} for n in self.runtimes
        }
        raws: list[np.ndarray] = []
        with self._bar(len(paths), desc) as bar:
            for part in batches(len(paths), self.settings.batch_size):
                pixels, raw_pixels = self.load_pixels(paths[part], raw)
                if raw_pixels is not None:
                    raws.append(raw_pixels)
                for name, runtime in self.runtimes.items():
                    result = runtime.image_outputs(pixels)
                    outs[name]["embedding"].append(result["embedding"])
                    outs[name]["cls"].append(result["cls"])
                bar.update(len(pixels))
        stacked = {n: {k: np.concatenate(v) for k, v in o.items()} for n, o in outs.items()}
        return stacked, (np.concatenate(raws) if raw else None)

    def texts(self, texts: Sequence[str], desc: str) -> dict[str, dict[str, np.ndarray]]:
        """{runtime name: {"embedding": (N, E), "cls": (N, D)}} for `texts`."""
        outs: dict[str, dict[str, list[np.ndarray]]] = {
            n: {"embedding": [], "cls": []} for n in self.runtimes
        }
        tokenizer = self.artifact.tokenizer
        with self._bar(len(texts), desc) as bar:
            for part in batches(len(texts), self.settings.batch_size):
                batch = tokenizer.encode_batch(list(texts[part]), max_length=self.config.max_text_len)
                for name, runtime in self.runtimes.items():
                    result = runtime.text_outputs(batch.input_ids, batch.attention_mask)
                    outs[name]["embedding"].append(result["embedding"])
                    outs[name]["cls"].append(result["cls"])
                bar.update(len(batch.input_ids))
        return {n: {k: np.concatenate(v) for k, v in o.items()} for n, o in outs.items()}

    def vqa_logits(
        self, image_index: np.ndarray, pixels: np.ndarray, questions: Sequence[str], desc: str
    ) -> dict[str, np.ndarray]:
        """{runtime name: (N, A) VQA logits}; question i is asked about pixels[image_index[i]]."""
        outs: dict[str, list[np.ndarray]] = {n: [] for n in self.runtimes}
        tokenizer = self.artifact.tokenizer
        with self._bar(len(questions), desc) as bar:
            for part in batches(len(questions), self.settings.batch_size):
                batch = tokenizer.encode_batch(list(questions[part]), max_length=self.config.max_text_len)
                batch_pixels = pixels[image_index[part]]
                for name, runtime in self.runtimes.items():
                    outs[name].append(
                        runtime.head_logits("vqa", batch_pixels, batch.input_ids, batch.attention_mask)
                    )
                bar.update(len(batch.input_ids))
        return {n: np.concatenate(v) for n, v in outs.items()}

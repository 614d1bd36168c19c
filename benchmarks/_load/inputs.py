"""Request inputs of the load benchmarks: short real texts (WordNet glosses), random PNGs and the JSON
bodies of `POST /v1/embeddings` built from them."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

WORDNET = Path("/usr/share/wordnet/data.noun")
WORDS = [
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "small",
    "large",
    "circle",
    "square",
    "triangle",
    "left",
    "right",
    "above",
    "below",
    "photo",
    "sneaker",
    "boot",
    "dress",
    "shirt",
    "emoji",
    "face",
    "cat",
    "dog",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "quick",
    "brown",
]  # fmt: skip  (benchmarks/soak.py builds its texts from these)


def make_texts(n: int, seed: int = 0) -> list[str]:
    """`n` texts of 6 to 11 of `WORDS`, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 12)))) for _ in range(n)]


def wordnet_glosses(tokenizer: Any, n: int, lo: int = 14, hi: int = 18) -> list[str]:
    """Real short texts: WordNet noun glosses of lo..hi tokens (with [CLS] and [SEP])."""
    glosses: list[str] = []
    if WORDNET.is_file():
        for line in WORDNET.read_text(errors="replace").splitlines():
            if "|" in line and not line.startswith(" "):
                gloss = line.split("|", 1)[1].split(";")[0].strip()
                if gloss:
                    glosses.append(gloss)
            if len(glosses) > 40 * n:
                break
    if not glosses:  # wordnet-base missing: generated texts of the same length
        rng = np.random.default_rng(0)
        words = [
            "red",
            "green",
            "blue",
            "small",
            "large",
            "circle",
            "square",
            "photo",
            "of",
            "a",
            "the",
            "dog",
            "cat",
            "runs",
            "over",
        ]
        glosses = [" ".join(rng.choice(words, size=14)) for _ in range(4 * n)]
    counts = tokenizer.count_tokens(glosses)
    chosen = [g for g, c in zip(glosses, counts, strict=True) if lo <= c <= hi]
    return (chosen or glosses)[:n]


def png_pool(n: int, side: int, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def request_bodies(texts: list[str], images: list[bytes], per_request: int, modality: str) -> list[str]:
    if modality == "image":
        uris = [f"data:image/png;base64,{base64.b64encode(b).decode()}" for b in images]
        pool: list[str] = uris
    else:
        pool = texts
    bodies = []
    for i in range(max(64, len(pool) // per_request)):
        chunk = [pool[(i * per_request + k) % len(pool)] for k in range(per_request)]
        bodies.append(json.dumps({"input": chunk[0] if per_request == 1 else chunk, "model": "momo"}))
    return bodies

"""`momo data prepare`: install the Debian data packages where missing and write every bundled source
with fixed train/val/test splits under one data folder (default ``data/``, or ``$MOMO_DATA_DIR``).

Each source is written into a temporary folder and renamed into place, then marked with a ``_SUCCESS``
file holding the parameters it was written with; a later run skips a source whose marker matches, so
the command is idempotent and an interrupted run never leaves a half-written source that looks done.
Where the files go, and how trainers and evaluators find them: :mod:`training.data.layout`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data import clipart, emoji, fashion_mnist, gcide, shapes_generation, text_sources
from training.data.formats import iter_jsonl
from training.data.layout import DEFAULT_DATA_DIR, TEXT_SPLITS, source_paths, split_location

# bump when the written files change meaning, so existing _SUCCESS markers stop matching
FORMAT_VERSION = 2  # v2: GCIDE, clip art, ITM truth fields in pairs, a test split of the corpus
SUCCESS = "_SUCCESS"


# source -> [(Debian package, a file it installs that the source reads; present when usable)]
DEBIAN_PACKAGES: dict[str, list[tuple[str, Path]]] = {
    "fashion_mnist": [
        ("dataset-fashion-mnist", fashion_mnist.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    ],
    "emoji": [("fonts-noto-color-emoji", emoji.EMOJI_FONT)],
    "wordnet": [("wordnet-base", text_sources.WORDNET_DIR / "data.noun")],
    "fortunes": [
        ("fortunes", text_sources.FORTUNES_DIR / "fortunes"),
        ("fortunes-bofh-excuses", text_sources.FORTUNES_DIR / "bofh-excuses"),
        ("fortunes-debian-hints", text_sources.FORTUNES_DIR / "debian-hints"),
    ],
    "gcide": [("dict-gcide", gcide.GCIDE_DIR / "gcide.dict.dz")],
    "clipart": [("openclipart-png", clipart.CLIPART_DIR / "animals")],
}

_MICRO = {"train": 200, "val": 50, "test": 50}
# per source and split: the record limit (None = everything). Shapes counts are scene counts.
SCALES: dict[str, dict[str, dict[str, int | None]]] = {
    "default": {
        "fashion_mnist": {"train": None, "val": None, "test": None},
        "shapes": dict(shapes_generation.SHAPES_DEFAULT_COUNTS),
        "emoji": {"train": None, "val": None, "test": None},
        "wordnet": {"train": None, "val": None, "test": None},
        "fortunes": {"train": None, "val": None, "test": None},
        "gcide": {"train": None, "val": None, "test": None},
        "clipart": {"train": None, "val": None, "test": None},
    },
    "micro": {
        s: dict(_MICRO)
        for s in ("fashion_mnist", "shapes", "emoji", "wordnet", "fortunes", "gcide", "clipart")
    },
}


class PrepareError(RuntimeError):
    """A data source cannot be prepared (e.g. its Debian package is missing and cannot be installed)."""


# ------------------------------------------------------------------------------------------- packages


def dpkg_installed(package: str) -> bool | None:
    """True/False from ``dpkg -s``; None when dpkg is not available (not a Debian system)."""
    if shutil.which("dpkg") is None:
        return None
    proc = subprocess.run(["dpkg", "-s", package], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and "Status: install ok installed" in proc.stdout


def ensure_packages(wanted: list[str], *, install_missing: bool = True) -> None:
    """Make the Debian packages of the ``wanted`` sources available, with ``apt-get`` where missing.

    A source counts as available when the file it reads exists (e.g. copied into a container without
    dpkg); otherwise its package is installed when ``install_missing`` (through sudo when not root).
    Raises :class:`PrepareError` naming the packages that are still missing.
    """
    needed = [pkg for src in wanted for pkg in DEBIAN_PACKAGES.get(src, [])]
    missing = list(
        dict.fromkeys(name for name, path in needed if not path.exists() or dpkg_installed(name) is False)
    )
    if not missing:
        return
    if install_missing and shutil.which("apt-get"):
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print(f"installing Debian packages: {' '.join(missing)}", file=sys.stderr)
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *missing], env=env, check=False)
    still = list(dict.fromkeys(name for name, path in needed if not path.exists()))
    if still:
        raise PrepareError(
            f"missing data packages: {' '.join(still)}; install them with "
            f"`sudo apt-get install -y {' '.join(still)}`"
            + ("" if install_missing else " (or run without --no-install)")
        )


# ------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class SummaryRow:
    source: str
    split: str
    count: int
    path: str
    skipped: bool


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / SUCCESS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


@dataclass
class _Job:
    name: str
    params: dict[str, Any]
    write: Callable[[Path], dict[str, int]]


def _write_atomically(data_dir: Path, job: _Job) -> tuple[dict[str, int], bool]:
    """Write ``job`` into ``data_dir/<name>`` unless a matching marker is there; (counts, skipped)."""
    final = data_dir / job.name
    marker = _read_marker(final)
    if marker is not None and marker.get("params") == job.params:
        return {k: int(v) for k, v in marker.get("counts", {}).items()}, True
    tmp = data_dir / f".{job.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    counts = job.write(tmp)
    (tmp / SUCCESS).write_text(
        json.dumps({"params": job.params, "counts": counts, "written_at": time.time()}, indent=1) + "\n",
        encoding="utf-8",
    )
    if final.exists():
        old = data_dir / f".{job.name}.old"
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    return counts, False


def _jsonl_texts(path: Path, *keys: str) -> Iterator[str]:
    if path.exists():
        for _, obj in iter_jsonl(path):
            for key in keys:
                value = obj.get(key)
                if isinstance(value, str):
                    yield value


def _corpus_parts(data_dir: Path) -> dict[str, Callable[[str], Iterator[str]]]:
    """Text for tokenizer training and MLM: GCIDE definitions (``headword: definition``), WordNet
    glosses (prefixed by their words, so every noun is seen), fortunes, the captions of the image–text
    pairs and the distinct shapes VQA questions. Each split reads the same split of every source, so
    held-out text (the MLM evaluation) is never trained on."""
    paths = source_paths(data_dir)

    def wordnet(split: str) -> Iterator[str]:
        path = paths["wordnet"][split]["labeled_text"]
        if path.exists():
            for _, obj in iter_jsonl(path):
                words = ", ".join(obj.get("words", []))
                yield f"{words}: {obj['text']}" if words else str(obj["text"])

    def definitions(split: str) -> Iterator[str]:
        path = paths["gcide"][split]["text_pairs"]
        if path.exists():
            for _, obj in iter_jsonl(path):
                yield f"{obj['query']}: {obj['text']}"

    return {
        "gcide": definitions,
        "wordnet": wordnet,
        "fortunes": lambda s: _jsonl_texts(paths["fortunes"][s]["labeled_text"], "text"),
        "fashion_mnist": lambda s: _jsonl_texts(paths["fashion_mnist"][s]["pairs"], "text"),
        "shapes": lambda s: _jsonl_texts(paths["shapes"][s]["pairs"], "text"),
        "shapes_questions": lambda s: _jsonl_texts(paths["shapes"][s]["vqa"], "question"),
        "emoji": lambda s: _jsonl_texts(paths["emoji"][s]["pairs"], "text"),
        "clipart": lambda s: _jsonl_texts(paths["clipart"][s]["pairs"], "text"),
    }


def _jobs(data_dir: Path, scale: str, progress: bool) -> list[_Job]:
    limits = SCALES[scale]
    version = {"format_version": FORMAT_VERSION}
    jobs = [
        _Job(
            "fashion_mnist",
            {
                **version,
                "limits": limits["fashion_mnist"],
                "val_size": fashion_mnist.FASHION_VAL_SIZE,
                "val_seed": fashion_mnist.FASHION_VAL_SEED,
            },
            lambda out: fashion_mnist.write_fashion_mnist(
                out, limits=limits["fashion_mnist"], progress=progress
            ),
        ),
        _Job(
            "shapes",
            {**version, "counts": limits["shapes"], "seeds": shapes_generation.SHAPES_SEEDS},
            lambda out: shapes_generation.write_shapes(
                out, counts={k: int(v or 0) for k, v in limits["shapes"].items()}, progress=progress
            ),
        ),
        _Job(
            "emoji",
            {**version, "limits": limits["emoji"]},
            lambda out: emoji.write_emoji(out, limits=limits["emoji"], progress=progress),
        ),
        _Job(
            "wordnet",
            {**version, "limits": limits["wordnet"]},
            lambda out: text_sources.write_wordnet(out, limits=limits["wordnet"], progress=progress),
        ),
        _Job(
            "fortunes",
            {
                **version,
                "limits": limits["fortunes"],
                "max_chars": text_sources.FORTUNE_MAX_CHARS,
                "min_category_size": text_sources.FORTUNE_MIN_CATEGORY_SIZE,
            },
            lambda out: text_sources.write_fortunes(out, limits=limits["fortunes"], progress=progress),
        ),
        _Job(
            "gcide",
            {
                **version,
                "limits": limits["gcide"],
                "min_words": gcide.DEFINITION_MIN_WORDS,
                "max_chars": gcide.DEFINITION_MAX_CHARS,
            },
            lambda out: gcide.write_gcide(out, limits=limits["gcide"], progress=progress),
        ),
        _Job(
            "clipart",
            {
                **version,
                "limits": limits["clipart"],
                "min_class_size": clipart.CLIPART_MIN_CLASS_SIZE,
                "max_pixels": clipart.CLIPART_MAX_PIXELS,
            },
            lambda out: clipart.write_clipart(out, limits=limits["clipart"], progress=progress),
        ),
    ]
    # the corpus depends on everything above, so its parameters include theirs
    jobs.append(
        _Job(
            "text",
            {**version, "inputs": {j.name: j.params for j in jobs}},
            lambda out: text_sources.write_text_corpus(out, _corpus_parts(data_dir), TEXT_SPLITS),
        )
    )
    return jobs


def prepare_all(
    data_dir: str | Path = DEFAULT_DATA_DIR,
    *,
    scale: str = "default",
    install_missing: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Write every bundled source under ``data_dir``; returns a summary.

    ``scale="micro"`` writes at most 200 records per split (seconds; for tests). The summary is
    ``{"data_dir", "scale", "seconds", "rows": [{"source", "split", "count", "path", "skipped"}]}``
    where ``skipped`` means the source was already written with the same parameters.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose from {sorted(SCALES)}")
    start = time.perf_counter()
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    jobs = _jobs(data_dir, scale, progress)
    pending = [
        j.name for j in jobs if (m := _read_marker(data_dir / j.name)) is None or m.get("params") != j.params
    ]
    ensure_packages(pending, install_missing=install_missing)

    rows: list[SummaryRow] = []
    for job in jobs:
        t0 = time.perf_counter()
        counts, skipped = _write_atomically(data_dir, job)
        if progress:
            state = "up to date" if skipped else f"written in {time.perf_counter() - t0:.1f}s"
            print(f"{job.name}: {state}", file=sys.stderr)
        rows.extend(
            SummaryRow(job.name, split, count, str(split_location(data_dir, job.name, split)), skipped)
            for split, count in counts.items()
        )
    return {
        "data_dir": str(data_dir),
        "scale": scale,
        "seconds": round(time.perf_counter() - start, 2),
        "rows": [r.__dict__ for r in rows],
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as an aligned text table."""
    header = ("source", "split", "count", "status", "path")
    lines = [header] + [
        (r["source"], r["split"], str(r["count"]), "kept" if r["skipped"] else "written", r["path"])
        for r in summary["rows"]
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = [
        "  ".join(
            c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=False))
        )
        + "  "
        + line[-1]
        for line in lines
    ]
    out.append(f"data in {summary['data_dir']} (scale {summary['scale']}, {summary['seconds']:.1f}s)")
    return "\n".join(out)


def prepare_command(
    data_dir: str | Path = DEFAULT_DATA_DIR, scale: str = "default", install_missing: bool = True
) -> dict[str, Any]:
    """The body of ``momo data prepare``: prepare everything and print the summary table."""
    summary = prepare_all(data_dir, scale=scale, install_missing=install_missing, progress=True)
    print(format_summary(summary))
    return summary

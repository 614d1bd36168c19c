"""The on-disk format of exported graphs: file names, `export.json`, hashes, and the graph cache.

This module is the one contract between the code that writes graphs (`momo.graph_writer`, driven by
`momo.export`) and the code that serves them (`momo.runtime`). It imports neither of them, nor torch:
serving an artifact that ships its graphs needs only this module, numpy and onnxruntime.

Every format lives flat in one directory (an artifact's own, or a cache entry), so an artifact's
manifest can hash them all:

- ``onnx``: ``{image,text,pair}_encoder.onnx`` sharing one external-data file ``encoders.onnx.data``;
- ``onnx-int8``: the same with ``.int8`` in every name;
- ``torchscript``: ``encoders.torchscript.pt``, one ScriptModule with methods image/text/pair;
- ``torch-export``: ``{image,text,pair}_encoder.pt2``, one `torch.export` program per entry point;
- ``export.json``: format version, the sha256 of the weights and config the graphs were exported
  from, and per format its files' sha256s (plus exporter details and parity figures).

Graphs an artifact does not ship are exported once into a cache directory,
`<cache root>/<sha256 of model.safetensors>/`, by a `GraphExporter` the caller passes to
`ensure_graphs`; the cache root is `cache_dir`, else `$MOMO_CACHE_DIR`, else `~/.cache/momo`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from momo.artifact import CONFIG_FILE, WEIGHTS_FILE, Artifact, sha256_file
from momo.heads import HeadSpec

__all__ = [
    "ENTRY_POINTS",
    "EXPORT_FORMAT_VERSION",
    "EXPORT_INFO_FILE",
    "FORMATS",
    "INPUT_NAMES",
    "ONNX_DATA_FILES",
    "ONNX_FILES",
    "TORCHSCRIPT_FILE",
    "TORCH_EXPORT_FILES",
    "GraphExporter",
    "RuntimeLoadError",
    "config_sha256",
    "default_cache_root",
    "ensure_graphs",
    "entry_outputs",
    "format_files",
    "graphs_usable",
    "read_export_info",
    "weights_sha256",
    "write_export_info",
]

EXPORT_INFO_FILE = "export.json"
EXPORT_FORMAT_VERSION = 1
ENTRY_POINTS = ("image", "text", "pair")
INPUT_NAMES: dict[str, list[str]] = {
    "image": ["pixels"],
    "text": ["input_ids", "attention_mask"],
    "pair": ["pixels", "input_ids", "attention_mask"],
}
# format -> entry point -> file. All ONNX graphs of one format share one external-data file that
# holds every distinct weight tensor once (the three graphs run the same shared transformer).
ONNX_FILES: dict[str, dict[str, str]] = {
    "onnx": {e: f"{e}_encoder.onnx" for e in ENTRY_POINTS},
    "onnx-int8": {e: f"{e}_encoder.int8.onnx" for e in ENTRY_POINTS},
}
ONNX_DATA_FILES = {"onnx": "encoders.onnx.data", "onnx-int8": "encoders.int8.onnx.data"}
TORCHSCRIPT_FILE = "encoders.torchscript.pt"  # one ScriptModule with methods image/text/pair
TORCH_EXPORT_FILES = {e: f"{e}_encoder.pt2" for e in ENTRY_POINTS}  # torch.export fallback
FORMATS = ("onnx", "onnx-int8", "torchscript", "torch-export")


class RuntimeLoadError(RuntimeError):
    """A runtime could not be built (missing backend, unavailable device, unusable graphs)."""


class GraphExporter(Protocol):
    """Writes `formats` of `artifact`'s graphs, and their `export.json`, into the empty `directory`.

    `momo.graph_writer.export_graphs` is the implementation; it imports torch (and onnx)."""

    def __call__(self, artifact: Artifact, directory: Path, formats: Sequence[str]) -> None: ...


def entry_outputs(head_specs: Mapping[str, HeadSpec]) -> dict[str, list[str]]:
    """Output names of each entry point for an artifact with these heads."""

    def logits(kind: str) -> list[str]:
        return [f"logits_{name}" for name in sorted(head_specs) if head_specs[name].input == kind]

    return {
        "image": ["embedding", "cls", *logits("image")],
        "text": ["embedding", "cls", *logits("text")],
        "pair": ["cls", *logits("pair")],
    }


def format_files(fmt: str) -> list[str]:
    """Every file one export format consists of."""
    if fmt in ONNX_FILES:
        return [*ONNX_FILES[fmt].values(), ONNX_DATA_FILES[fmt]]
    if fmt == "torchscript":
        return [TORCHSCRIPT_FILE]
    if fmt == "torch-export":
        return list(TORCH_EXPORT_FILES.values())
    raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")


def file_hashes(directory: Path, fmt: str) -> dict[str, str]:
    """sha256 of every file of `fmt` in `directory` (the `sha256` entry of export.json)."""
    return {name: sha256_file(directory / name) for name in format_files(fmt)}


def default_cache_root() -> Path:
    """`$MOMO_CACHE_DIR`, else `~/.cache/momo`."""
    env = os.environ.get("MOMO_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "momo"


def weights_sha256(artifact: Artifact) -> str:
    """The sha256 of the artifact's weights (from its manifest when listed there)."""
    return artifact.manifest.files.get(WEIGHTS_FILE) or sha256_file(artifact.path / WEIGHTS_FILE)


def config_sha256(artifact: Artifact) -> str:
    """The sha256 of the artifact's config (from its manifest when listed there)."""
    return artifact.manifest.files.get(CONFIG_FILE) or sha256_file(artifact.path / CONFIG_FILE)


def read_export_info(directory: Path) -> dict[str, Any] | None:
    """`directory`'s export.json, or None when it is missing or unreadable."""
    path = directory / EXPORT_INFO_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_export_info(directory: Path, info: Mapping[str, Any]) -> None:
    """Write `info` as `directory`'s export.json (sorted keys, so equal info gives equal bytes)."""
    (directory / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def graphs_usable(directory: Path, artifact: Artifact, fmt: str, *, check_hashes: bool) -> bool:
    """Does `directory` hold `fmt` graphs exported from exactly this artifact's weights and config?

    With `check_hashes`, every file must also match the sha256 that export.json records for it."""
    info = read_export_info(directory)
    if not info or info.get("format_version") != EXPORT_FORMAT_VERSION:
        return False
    if info.get("weights_sha256") != weights_sha256(artifact) or info.get("config_sha256") != config_sha256(
        artifact
    ):
        return False
    entry = info.get("formats", {}).get(fmt)
    if not entry:
        return False
    hashes: dict[str, str] = entry.get("sha256", {})
    for name in format_files(fmt):
        path = directory / name
        if not path.is_file():
            return False
        if check_hashes and hashes.get(name) != sha256_file(path):
            return False
    return True


_EXPORT_LOCK = threading.Lock()


def ensure_graphs(
    artifact: Artifact, fmt: str, cache_dir: Path | None = None, exporter: GraphExporter | None = None
) -> Path:
    """The directory holding `fmt` graphs for `artifact`: the artifact itself when it ships them,
    else `<cache root>/<weights sha256>/`, exported into first by `exporter` when needed.

    The artifact's own files were verified against its manifest on load; a cache directory is
    checked against the sha256s in its `export.json`. Cache writes are atomic (export into a temp
    directory, then rename), so concurrent processes never see half a cache entry. With no
    `exporter` (a torch-free install), missing graphs are a `RuntimeLoadError` that says how to
    make them.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    listed = all(name in artifact.manifest.files for name in format_files(fmt))  # hashed by load_artifact
    if listed and graphs_usable(artifact.path, artifact, fmt, check_hashes=False):
        return artifact.path
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    target = root / weights_sha256(artifact)
    with _EXPORT_LOCK:
        if graphs_usable(target, artifact, fmt, check_hashes=True):
            return target
        if exporter is None:
            raise RuntimeLoadError(
                f"{artifact.path} ships no {fmt} graphs and none are cached in {root}; "
                f"run `momo export {artifact.reference}` where torch and onnx are installed"
            )
        # Keep what a valid cache entry already has (e.g. "onnx" when "torchscript" is added).
        info = read_export_info(target)
        wanted = {fmt}
        if info and info.get("weights_sha256") == weights_sha256(artifact):
            wanted |= {
                f for f in info.get("formats", {}) if graphs_usable(target, artifact, f, check_hashes=False)
            }
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name[:12]}-", dir=root))
        except OSError as exc:
            raise RuntimeLoadError(
                f"{artifact.path} ships no {fmt} graphs and the cache {root} is not writable ({exc}); "
                f"run `momo export {artifact.reference}` or set MOMO_CACHE_DIR to a writable directory"
            ) from exc
        try:
            try:
                exporter(artifact, tmp, sorted(wanted))
            except ImportError as exc:  # the exporter imports torch and onnx when it runs
                missing = exc.name or "torch/onnx"
                raise RuntimeLoadError(
                    f"{artifact.path} ships no {fmt} graphs and exporting them needs {missing} "
                    f"(install the `onnx` package, or run `momo export {artifact.reference}` where it is)"
                ) from exc
            _swap_into_place(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if not graphs_usable(target, artifact, fmt, check_hashes=True):
            raise RuntimeLoadError(f"export into {target} did not produce usable {fmt} graphs")
        return target


def _swap_into_place(new: Path, target: Path) -> None:
    """Rename `new` onto `target`; an existing (stale or partial) `target` is moved aside first."""
    try:
        os.rename(new, target)
        return
    except OSError:
        pass
    old = target.with_name(f".old-{target.name[:12]}-{uuid.uuid4().hex[:8]}")
    with contextlib.suppress(OSError):
        os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)

"""Save and load a model directory (the contract between training, export and serving).

A directory holds (DESIGN §3): `config.json`, `model.safetensors`, `tokenizer.json`, `heads.json`,
`manifest.json` (with the sha256 of every other file) and, once exported, derived graphs. Loading
verifies every hash listed in the manifest and refuses a corrupt or incomplete directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from momo.config import MoMoConfig
from momo.heads import HeadSpec
from momo.tokenizer import MoMoTokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
HEADS_FILE = "heads.json"
MANIFEST_FILE = "manifest.json"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, HEADS_FILE)


class ArtifactError(RuntimeError):
    """A model directory is missing, incomplete, corrupt or inconsistent."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file + fsync + rename so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Manifest:
    name: str
    version: str = ""
    created_at: str = field(default_factory=utc_now)
    parent: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "parent": self.parent,
            "recipe": self.recipe,
            "data": self.data,
            "metrics": self.metrics,
            "files": self.files,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class HeadsFile:
    """`heads.json`: every kept head's spec plus the contrastive temperature."""

    heads: dict[str, HeadSpec] = field(default_factory=dict)
    temperature: float = 0.07
    token_head: bool = False  # the MLM head is in the weights (momo-tiny:v2 on)

    def to_dict(self) -> dict[str, Any]:
        return {
            "heads": {k: v.to_dict() for k, v in self.heads.items()},
            "temperature": self.temperature,
            "token_head": self.token_head,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadsFile:
        heads = {k: HeadSpec.from_dict(v) for k, v in data.get("heads", {}).items()}
        return cls(
            heads=heads,
            temperature=float(data.get("temperature", 0.07)),
            token_head=bool(data.get("token_head", False)),
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable JSON ({exc})") from exc


def seal(directory: Path, manifest: Manifest) -> Manifest:
    """Hash every file of `directory` (but the manifest) into the manifest and write it."""
    manifest.files = {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE and not p.name.startswith(".")
    }
    write_json_atomic(directory / MANIFEST_FILE, manifest.to_dict())
    return manifest


def verify(directory: Path) -> Manifest:
    """Check the directory is complete and every listed file matches its sha256."""
    if not directory.is_dir():
        raise ArtifactError(f"model directory {directory} does not exist")
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactError(f"{directory} has no {MANIFEST_FILE}: not a complete artifact")
    manifest = Manifest.from_dict(_read_json(manifest_path))
    for required in REQUIRED_FILES:
        if required not in manifest.files:
            raise ArtifactError(f"{directory}: manifest does not list required file {required}")
    for name, expected in manifest.files.items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory}: file {name} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{directory}: {name} is corrupt (sha256 {actual[:12]}… but manifest says {expected[:12]}…)"
            )
    return manifest


@dataclass
class Artifact:
    """A verified model directory, loaded lazily: torch is imported only by `load_model`."""

    path: Path
    config: MoMoConfig
    tokenizer: MoMoTokenizer
    heads: HeadsFile
    manifest: Manifest

    @property
    def reference(self) -> str:
        return f"{self.manifest.name}:{self.manifest.version}"

    def load_model(self, device: str = "cpu"):  # -> MoMoModel (typed loosely to keep torch lazy)
        from safetensors.torch import load_file

        from momo.model import MoMoModel

        model = MoMoModel(
            self.config,
            head_specs=self.heads.heads,
            temperature=self.heads.temperature,
            with_token_head=self.heads.token_head,
        )
        state = load_file(str(self.path / WEIGHTS_FILE), device=device)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ArtifactError(
                f"{self.path}: weights do not match config/heads "
                f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
            )
        return model.to(device).eval()


def load_artifact(directory: str | Path, *, verify_hashes: bool = True) -> Artifact:
    directory = Path(directory)
    manifest = (
        verify(directory) if verify_hashes else Manifest.from_dict(_read_json(directory / MANIFEST_FILE))
    )
    try:
        config = MoMoConfig.from_dict(_read_json(directory / CONFIG_FILE))
        tokenizer = MoMoTokenizer.load(directory / TOKENIZER_FILE)
    except ArtifactError:
        raise
    except Exception as exc:  # a malformed config or tokenizer file
        raise ArtifactError(f"{directory}: cannot load config/tokenizer ({exc})") from exc
    heads = HeadsFile.from_dict(_read_json(directory / HEADS_FILE))
    return Artifact(directory, config, tokenizer, heads, manifest)


def save_artifact(
    directory: str | Path,
    model: Any,  # MoMoModel
    tokenizer: MoMoTokenizer,
    manifest: Manifest,
) -> Manifest:
    """Write a complete artifact into `directory` (created; must be empty or absent)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.to_json(directory / CONFIG_FILE)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    tokenizer.save(directory / TOKENIZER_FILE)
    heads = HeadsFile(dict(model.head_specs), float(model.temperature), model.token_head is not None)
    write_json_atomic(directory / HEADS_FILE, heads.to_dict())
    return seal(directory, manifest)


def update_manifest(directory: str | Path, **changes: Any) -> Manifest:
    """Merge `changes` (e.g. metrics=…) into a verified artifact's manifest and re-seal it.

    Used for derived additions: exported graphs, evaluation figures.
    """
    directory = Path(directory)
    manifest = verify(directory)  # refuses a directory without a (matching) manifest
    for key, value in changes.items():
        current = getattr(manifest, key)
        if isinstance(current, dict) and isinstance(value, dict):
            current.update(value)
        else:
            setattr(manifest, key, value)
    return seal(directory, manifest)

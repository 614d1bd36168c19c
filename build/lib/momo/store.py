"""The model registry on disk: `model_store/<name>/<version>/` plus an `active.json` pointer.

Registration is atomic: a version is written into a hidden temp directory inside the store and
then renamed into place; `rename` onto an existing non-empty directory fails, so two concurrent
registrations can never share (or half-write) a version number. The active pointer is replaced
with an atomic `os.replace`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from momo.artifact import (
    MANIFEST_FILE,
    Artifact,
    ArtifactError,
    _read_json,
    load_artifact,
    seal,
    write_json_atomic,
)

ACTIVE_FILE = "active.json"
DEFAULT_STORE = Path(os.environ.get("MOMO_MODEL_STORE", "model_store"))
_VERSION_RE = re.compile(r"^v(\d+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class StoreError(RuntimeError):
    """A reference that does not resolve, or an invalid store operation."""


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    path: Path
    active: bool
    created_at: str | None
    parent: str | None

    @property
    def reference(self) -> str:
        return f"{self.name}:{self.version}"


def _make_readable(directory: Path) -> None:
    """mkdtemp (and some writers) create owner-only modes; a version must be readable by the
    service's user (e.g. a non-root container user), so give it the usual 755/644."""
    os.chmod(directory, 0o755)
    for path in directory.iterdir():
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def _version_number(version: str) -> int:
    match = _VERSION_RE.match(version)
    return int(match.group(1)) if match else -1


class ModelStore:
    def __init__(self, root: str | Path = DEFAULT_STORE):
        self.root = Path(root)

    # --- reading ----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))

    def versions(self, name: str) -> list[str]:
        directory = self.root / name
        if not directory.is_dir():
            return []
        found = [p.name for p in directory.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
        return sorted(found, key=_version_number)

    def active(self) -> tuple[str, str] | None:
        path = self.root / ACTIVE_FILE
        if not path.is_file():
            return None
        data = _read_json(path)
        return str(data["name"]), str(data["version"])

    def list(self) -> list[VersionInfo]:
        active = self.active()
        infos = []
        for name in self.names():
            for version in self.versions(name):
                path = self.root / name / version
                created = parent = None
                if (path / MANIFEST_FILE).is_file():
                    try:
                        manifest = _read_json(path / MANIFEST_FILE)
                        created, parent = manifest.get("created_at"), manifest.get("parent")
                    except ArtifactError:
                        pass
                infos.append(VersionInfo(name, version, path, active == (name, version), created, parent))
        return infos

    def resolve(self, reference: str | None = None) -> Path:
        """`None`/"active" -> the active version; "name" -> its active or latest version;
        "name:version" -> that version; an existing directory path -> itself."""
        if reference in (None, "", "active"):
            active = self.active()
            if active is None:
                raise StoreError(f"no active model in {self.root}; run `momo models activate NAME:VERSION`")
            return self.root / active[0] / active[1]
        assert reference is not None
        candidate = Path(reference)
        if (candidate / MANIFEST_FILE).is_file() and (os.sep in reference or reference.startswith(".")):
            return candidate
        name, _, version = reference.partition(":")
        if not version:
            versions = self.versions(name)
            if not versions:
                raise StoreError(f"no model named {name!r} in {self.root} (known: {self.names() or 'none'})")
            active = self.active()
            version = active[1] if active and active[0] == name else versions[-1]
        path = self.root / name / version
        if not path.is_dir():
            raise StoreError(
                f"no version {version!r} of {name!r} in {self.root} (known: {self.versions(name)})"
            )
        return path

    def load(self, reference: str | None = None) -> Artifact:
        return load_artifact(self.resolve(reference))

    def reference_of(self, path: Path) -> str:
        return f"{path.parent.name}:{path.name}"

    # --- writing ----------------------------------------------------------------------------------
    def register(self, name: str, write: Callable[[Path, str], Any]) -> VersionInfo:
        """Create the next version of `name`: `write(tmp_dir, version)` fills a temp directory,
        which is verified and renamed into place. A failure leaves no version behind."""
        if not _NAME_RE.match(name):
            raise StoreError(f"invalid model name {name!r}")
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_dir))
        try:
            existing = self.versions(name)
            write(tmp, f"v{(_version_number(existing[-1]) + 1) if existing else 1}")
            manifest = load_artifact(tmp).manifest  # refuse to register what would not load
            _make_readable(tmp)
            for _attempt in range(1000):
                existing = self.versions(name)
                version = f"v{(_version_number(existing[-1]) + 1) if existing else 1}"
                if manifest.version != version or manifest.name != name:
                    manifest.name, manifest.version = name, version
                    seal(tmp, manifest)
                target = model_dir / version
                try:
                    os.rename(tmp, target)  # fails if another writer took this number first
                except OSError:
                    continue
                return VersionInfo(name, version, target, False, manifest.created_at, manifest.parent)
            raise StoreError(f"could not allocate a version for {name!r}")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def activate(self, reference: str) -> VersionInfo:
        path = self.resolve(reference)
        load_artifact(path)  # never point at a broken artifact
        name, version = path.parent.name, path.name
        if path.parent.parent.resolve() != self.root.resolve():
            raise StoreError(f"{reference} is not inside the store {self.root}")
        write_json_atomic(self.root / ACTIVE_FILE, {"name": name, "version": version})
        return VersionInfo(name, version, path, True, None, None)

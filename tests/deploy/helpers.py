"""Readers for the deployment files: Dockerfiles, .dockerignore (Docker's own matching rules),
compose variable interpolation, and the lock files in docker/requirements/."""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "gpu": DOCKER / "Dockerfile.gpu"}
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "docker-compose.gpu.yml"]


# --- Dockerfiles ---------------------------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the (continuation-joined) line
    line: int  # where it starts (1-based)
    comments: list[str] = field(default_factory=list)  # the comment lines right above it


@dataclass
class Stage:
    name: str
    base: str  # image reference or the name of an earlier stage (ARG defaults substituted)
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: dict[str, Stage]
    instructions: list[Instruction]

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, base first."""
        stages = []
        while name in self.stages:
            stages.insert(0, self.stages[name])
            name = self.stages[name].base
        return stages

    def effective(self, name: str, keyword: str) -> Instruction | None:
        """The last `keyword` instruction in effect for stage `name` (inherited through FROM)."""
        found = None
        for stage in self.chain(name):
            for inst in stage.all(keyword):
                found = inst
        return found


def parse_dockerfile(path: Path) -> Dockerfile:
    instructions: list[Instruction] = []
    comments: list[str] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            if not current:
                comments.append(line)
            continue  # comment lines inside a continuation are dropped, as Docker does
        if not line and not current:
            comments = []
            continue
        if not current:
            start = number
        current.append(line[:-1] if line.endswith("\\") else line)
        if line.endswith("\\"):
            continue
        text = " ".join(part.strip() for part in current if part.strip())
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start, comments))
        current, comments = [], []
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for inst in instructions:
        if inst.keyword == "ARG" and stage is None:
            name, _, default = inst.args.partition("=")
            global_args[name] = default
        elif inst.keyword == "FROM":
            words = inst.args.split()
            words = [w for w in words if not w.startswith("--")]
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"stage{len(stages)}"
            stage = Stage(name, base)
            stages[name] = stage
        elif stage is not None:
            stage.instructions.append(inst)
    return Dockerfile(path, global_args, stages, instructions)


def exec_form(args: str) -> list[str]:
    """The JSON-array (exec) form of CMD/HEALTHCHECK CMD; shell form comes back as ['/bin/sh', '-c', ...]."""
    import json

    args = args.strip()
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list)
        return [str(v) for v in value]
    return ["/bin/sh", "-c", args]


def copy_sources(inst: Instruction) -> tuple[dict[str, str], list[str], str]:
    """(flags, sources, destination) of a COPY/ADD instruction."""
    words = shlex.split(inst.args)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words[:-1], words[-1]


# --- .dockerignore (moby/patternmatcher semantics) -------------------------------------------------------
@dataclass
class _Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern[str]


def _compile(pattern: str) -> re.Pattern[str]:
    """Docker's translation: `**` spans directories (also none), `*` and `?` stay within one."""
    out = "^"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.find("]", i + 1)
            out += pattern[i : end + 1]
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def read_dockerignore(path: Path) -> list[_Pattern]:
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        cleaned = str(Path(line)).lstrip("/") if line not in ("/", ".") else line
        patterns.append(_Pattern(cleaned, exclusion, _compile(cleaned)))
    return patterns


def is_excluded(relpath: str, patterns: list[_Pattern]) -> bool:
    """Is `relpath` (relative to the context root, '/'-separated) left out of the build context?
    The last pattern that matches the path or one of its parent directories decides."""
    parents = relpath.split("/")[:-1]
    matched = False
    for pattern in patterns:
        if pattern.exclusion != matched:
            continue
        hit = bool(pattern.regex.match(relpath)) or any(
            pattern.regex.match("/".join(parents[: i + 1])) for i in range(len(parents))
        )
        if hit:
            matched = not pattern.exclusion
    return matched


def repo_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files of the work tree (what a checkout would hold)."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return sorted(p for p in out.splitlines() if (ROOT / p).is_file())


def build_context(patterns: list[_Pattern] | None = None) -> list[str]:
    patterns = patterns if patterns is not None else read_dockerignore(ROOT / ".dockerignore")
    return [p for p in repo_files() if not is_excluded(p, patterns)]


# --- compose --------------------------------------------------------------------------------------------
_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def compose_variables(text: str) -> dict[str, str | None]:
    """Every ${VAR...} in a compose file -> its default (None when it has none)."""
    found: dict[str, str | None] = {}
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for match in _VAR.finditer(text):
        name, op, default = match.groups()
        found[name] = default if op in (":-", "-") else found.get(name)
    return found


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose interpolation with the defaults (and `env` values) — enough for these files."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(3) or ""), value)
    return value


def merge(base: Any, override: Any) -> Any:
    """Deep merge of an override file (mappings merged, other values replaced)."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


# --- lock files ------------------------------------------------------------------------------------------
@dataclass
class Pin:
    line: str  # the requirement as written: 'name==version' or 'name[extras]==version'
    hashes: list[str] = field(default_factory=list)  # the '--hash=sha256:…' values that follow it


def read_lock(path: Path) -> dict[str, Pin]:
    """canonical name -> its pin, from a requirements file (uv's hashed format: a requirement, then
    ` \\`-continued `--hash=` lines, then `# via` comments) or a plain hand-written one."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip().removesuffix("\\").strip()
        if not line:
            continue
        if line.startswith("--hash="):
            assert current is not None, f"{path.name}: a hash before any requirement"
            current.hashes.append(line.removeprefix("--hash="))
            continue
        name = canonicalize_name(Requirement(line).name)
        assert name not in pins, f"{path.name} pins {name} twice"
        current = pins[name] = Pin(line)
    return pins


def read_pins(path: Path) -> dict[str, str]:
    """canonical name -> the requirement line ('name==version' or 'name[extras]==version')."""
    return {name: pin.line for name, pin in read_lock(path).items()}

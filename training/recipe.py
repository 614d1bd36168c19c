"""Stages described as data: a YAML recipe -> typed `Recipe` / `StageSpec` / `StreamSpec`.

```yaml
name: default
preset: momo-tiny          # a momo.config preset
config: {}                 # field overrides of the preset (e.g. towers: separate)
seed: 0
tokenizer: {corpus: [text/train.txt]}   # or {path: tokenizer.json} to reuse a fixed one
precision: auto           # bf16 autocast on CUDA and on CPU where measured faster; or fp32 / bf16
activation_checkpointing: false   # recompute each block in backward (less memory, ~1/3 more compute)
parallelism: ddp          # under torchrun: ddp replicates the module; fsdp shards it (momo-large)
stages:
  - name: images
    steps: 600
    lr: 1.0e-3
    mode: simultaneous      # or alternating (the ablation)
    weights: {mim: 1.0}
    streams:
      - {name: fmnist, kind: image, paths: [fashion_mnist/train], batch_size: 64, objectives: [mim]}
```
Paths are relative to the data directory unless absolute.

A stream's `source` is `memory` (decoded into RAM before training: fastest for the small bundled
data) or `shards` (WebDataset shards written by `momo data shard`, decoded on demand in `workers`
DataLoader processes, shuffled `shuffle_shards` shards at a time; `on_error: skip` skips and counts
a corrupt sample instead of stopping). `batch_size` is the global batch of one step;
`micro_batch_size` (default: batch_size / ranks) is the largest forward a device runs: a rank runs
as many gradient-accumulation passes as it takes to stay within it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from momo.config import MoMoConfig, get_preset
from training.losses import OBJECTIVES, parse_options
from training.streams import STREAM_KINDS

Parallelism = Literal["ddp", "fsdp"]  # across ranks (training.distributed)

Mode = Literal["simultaneous", "alternating"]
Source = Literal["memory", "shards"]
Precision = Literal["auto", "fp32", "bf16"]


@dataclass
class StreamSpec:
    name: str
    kind: str
    paths: list[str]
    batch_size: int
    objectives: list[str]
    limit: int | None = None
    source: Source = "memory"
    micro_batch_size: int | None = None
    workers: int = 0  # DataLoader processes decoding and batching this stream (0: in the trainer)
    shuffle_shards: int = 8  # shards shuffled together (the shuffle buffer of a shard stream)
    on_error: Literal["raise", "skip"] = "raise"  # a corrupt shard sample: stop, or skip and count

    def __post_init__(self) -> None:
        if self.kind not in STREAM_KINDS:
            raise ValueError(f"stream {self.name!r}: unknown kind {self.kind!r} (known: {STREAM_KINDS})")
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown:
            raise ValueError(f"stream {self.name!r}: unknown objectives {unknown} (known: {OBJECTIVES})")
        if self.batch_size < 2:
            raise ValueError(f"stream {self.name!r}: batch_size must be >= 2 (contrastive needs negatives)")
        if isinstance(self.paths, str):
            self.paths = [self.paths]
        if self.source not in ("memory", "shards"):
            raise ValueError(f"stream {self.name!r}: source must be memory or shards, not {self.source!r}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"stream {self.name!r}: on_error must be raise or skip, not {self.on_error!r}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"stream {self.name!r}: micro_batch_size must be >= 1")


@dataclass
class StageSpec:
    name: str
    steps: int
    streams: list[StreamSpec]
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    mode: Mode = "simultaneous"
    weights: dict[str, float] = field(default_factory=dict)
    checkpoint_every: int = 0  # 0: only at the end of the stage
    log_every: int = 10
    # options for objectives, e.g. {mim: {mask_ratio: 0.75}}
    objective_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("simultaneous", "alternating"):
            raise ValueError(f"stage {self.name!r}: mode must be simultaneous or alternating")
        if not self.streams:
            raise ValueError(f"stage {self.name!r} has no streams")
        names = [s.name for s in self.streams]
        if len(set(names)) != len(names):
            raise ValueError(f"stage {self.name!r}: duplicate stream names {names}")
        for objective, options in self.objective_options.items():
            try:
                parse_options(objective, options)
            except ValueError as exc:
                raise ValueError(f"stage {self.name!r}: {exc}") from exc

    @property
    def objectives(self) -> list[str]:
        seen: list[str] = []
        for stream in self.streams:
            seen += [o for o in stream.objectives if o not in seen]
        return seen


@dataclass
class Recipe:
    name: str
    stages: list[StageSpec]
    preset: str = "momo-tiny"
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    tokenizer: dict[str, Any] = field(default_factory=dict)
    data_dir: str = "data"
    precision: Precision = "auto"
    activation_checkpointing: bool = False
    parallelism: Parallelism = "ddp"

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, not {self.precision!r}")
        if self.parallelism not in ("ddp", "fsdp"):
            raise ValueError(f"parallelism must be ddp or fsdp, not {self.parallelism!r}")

    def model_config(self) -> MoMoConfig:
        return get_preset(self.preset, **self.config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def select_stages(self, names: list[str] | None) -> Recipe:
        if not names:
            return self
        known = [s.name for s in self.stages]
        missing = [n for n in names if n not in known]
        if missing:
            raise ValueError(f"unknown stages {missing}; this recipe has {known}")
        return dataclasses.replace(self, stages=[s for s in self.stages if s.name in names])

    def scaled(self, factor: float) -> Recipe:
        """Every stage's steps × factor (at least 1): the `--budget` knob."""
        stages = [dataclasses.replace(s, steps=max(1, round(s.steps * factor))) for s in self.stages]
        return dataclasses.replace(self, stages=stages)

    def from_shards(self, workers: int = 1) -> Recipe:
        """Every in-memory stream read from the shards `momo data shard --bundled` writes of its
        paths instead (`training.data.sharding.shard_location`), decoded in `workers` processes."""
        from training.data.sharding import shard_location

        def switch(stream: StreamSpec) -> StreamSpec:
            if stream.source == "shards":
                return stream
            if any(Path(p).is_absolute() for p in stream.paths):
                raise ValueError(f"stream {stream.name!r}: absolute paths have no bundled shards; name them")
            paths = [shard_location(p) for p in stream.paths]
            return dataclasses.replace(stream, source="shards", paths=paths, workers=workers)

        stages = [dataclasses.replace(s, streams=[switch(x) for x in s.streams]) for s in self.stages]
        return dataclasses.replace(self, stages=stages)


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    data = dict(data)
    stages = []
    for raw in data.pop("stages"):
        raw = dict(raw)
        streams = [StreamSpec(**s) for s in raw.pop("streams")]
        stages.append(StageSpec(streams=streams, **raw))
    return Recipe(stages=stages, **data)


def load_recipe(path: str | Path, **overrides: Any) -> Recipe:
    data = yaml.safe_load(Path(path).read_text())
    data.update({k: v for k, v in overrides.items() if v is not None})
    return recipe_from_dict(data)


def save_recipe(recipe: Recipe, path: Path) -> None:
    path.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))

from __future__ import annotations

import pytest

from momo.config import PRESETS, MoMoConfig, get_preset, list_presets
from momo.model import count_parameters


def test_json_round_trip(tmp_path) -> None:
    config = get_preset("momo-base", towers="separate")
    path = tmp_path / "config.json"
    config.to_json(path)
    assert MoMoConfig.from_json(path) == config
    assert MoMoConfig.from_json(config.to_json()) == config


def test_unknown_field_and_bad_shapes_refused() -> None:
    with pytest.raises(ValueError, match="unknown MoMoConfig fields"):
        MoMoConfig.from_dict({"num_layers": 2, "wdith": 3})
    with pytest.raises(ValueError, match="divisible"):
        MoMoConfig(width=100, num_heads=3)
    with pytest.raises(ValueError, match="multiple"):
        MoMoConfig(image_size=30, patch_size=4)
    with pytest.raises(KeyError, match="known"):
        get_preset("momo-huge")


def test_preset_parameter_counts(capsys) -> None:
    counts = {name: count_parameters(PRESETS[name]) for name in list_presets()}
    with capsys.disabled():
        print("\npreset parameter counts:", {k: f"{v / 1e6:.2f}M" for k, v in counts.items()})
    assert 85e6 <= counts["momo-base"] <= 120e6  # the paper's ~100M size class
    assert 1e6 <= counts["momo-tiny"] <= 5e6  # "a few million": trains on 2 CPU cores
    assert counts["momo-tiny"] < counts["momo-small"] < counts["momo-base"] < counts["momo-large"]
    # The ablation's separate towers are ~2.5x the shared encoder's blocks.
    base = get_preset("momo-base")
    separate = count_parameters(base.replace(towers="separate"))
    assert 1.9 < separate / counts["momo-base"] < 2.5
    # Known value: guards against accidental architecture changes.
    assert counts["momo-tiny"] == 2_662_080

from __future__ import annotations

import math

import pytest
import torch

from training.losses import weighted_sum
from training.losses.contrastive import ITCLoss, info_nce
from training.losses.matching import sample_hard_negatives
from training.losses.mim import patchify
from training.masking import IGNORE_INDEX, mask_tokens, random_patch_masking

SPECIAL = {0, 1, 2, 3, 4}  # [PAD] [UNK] [CLS] [SEP] [MASK]


def test_mlm_masking_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (400, 50), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    mask = torch.ones_like(ids)
    mask[:, 40:] = 0
    ids[:, 40:] = 0
    masked, labels = mask_tokens(
        ids, mask, mask_id=4, vocab_size=1000, special_ids=SPECIAL, generator=g, probability=0.15
    )
    chosen = labels != IGNORE_INDEX
    maskable = mask.bool() & (ids >= 5)
    assert not (chosen & ~maskable).any(), "special tokens or padding were chosen"
    rate = chosen.sum().item() / maskable.sum().item()
    assert 0.14 < rate < 0.17
    assert torch.equal(labels[chosen], ids[chosen])
    became_mask = (masked == 4) & chosen
    unchanged = (masked == ids) & chosen
    frac_mask = became_mask.sum().item() / chosen.sum().item()
    frac_same = unchanged.sum().item() / chosen.sum().item()
    assert 0.77 < frac_mask < 0.83
    assert 0.08 < frac_same < 0.13  # 10 % kept + random draws that hit the same token
    assert torch.equal(masked[~chosen], ids[~chosen])
    assert chosen.any(dim=1).all(), "every row gets at least one target"


def test_patch_masking_keeps_quarter_and_restores_order() -> None:
    g = torch.Generator().manual_seed(0)
    m = random_patch_masking(3, 16, 0.75, g, torch.device("cpu"))
    assert m.keep_indices.shape == (3, 4)
    assert m.mask.sum(dim=1).tolist() == [12, 12, 12]
    for b in range(3):
        assert not m.mask[b, m.keep_indices[b]].any()
        hidden = torch.nonzero(m.mask[b]).squeeze(1)
        order = torch.cat([m.keep_indices[b], hidden])
        assert torch.equal(order[m.restore[b]], torch.arange(16))


def test_patchify_matches_conv_patch_order() -> None:
    pixels = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(pixels, 4)  # (2, 4, 48)
    assert patches.shape == (2, 4, 48)
    # patch 1 is row 0, column 1: pixels [.., 0:4, 4:8], laid out (p, p, C)
    expected = pixels[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, 1], expected)


def test_info_nce_identical_pairs_near_zero_and_random_near_log_b() -> None:
    eye = torch.eye(8)
    assert info_nce(eye, eye, 100.0).item() < 1e-6
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(64, 32, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(64, 32, generator=g), dim=-1)
    assert info_nce(a, b, 1.0).item() == pytest.approx(math.log(64), rel=0.05)


def test_hard_negatives_never_positive_and_prefer_similar() -> None:
    g = torch.Generator().manual_seed(0)
    sim = torch.full((4, 4), -1.0)
    sim[0, 2] = 0.9  # text 2 looks like image 0's caption
    sim.fill_diagonal_(1.0)
    counts = torch.zeros(4)
    for _ in range(200):
        neg, has = sample_hard_negatives(sim, g)
        assert has.all() and (neg != torch.arange(4)).all()
        counts[neg[0]] += 1
    assert counts[2] > 190


def test_weighted_sum_is_the_one_combination() -> None:
    losses = {"mim": torch.tensor(2.0), "mlm": torch.tensor(3.0)}
    assert weighted_sum(losses, {"mim": 0.5}).item() == pytest.approx(4.0)
    with pytest.raises(ValueError):
        weighted_sum({}, {})


def test_learned_temperature_is_1d_and_loads_a_scalar_saved_by_earlier_runs() -> None:
    """FSDP shards no 0-d parameter, so `logit_scale` is (1,); checkpoints from before hold a 0-d one."""
    itc = ITCLoss(init_temperature=0.05)
    assert itc.logit_scale.shape == (1,)
    assert itc.temperature == pytest.approx(0.05)
    itc.load_state_dict({"logit_scale": torch.tensor(math.log(1.0 / 0.2))})  # a 0-d value
    assert itc.logit_scale.shape == (1,)
    assert itc.temperature == pytest.approx(0.2)

from __future__ import annotations

import pytest
import torch

from momo.config import MoMoConfig
from momo.heads import ITM_SPEC, HeadSpec
from momo.model import MoMoEncoder, MoMoModel


def _inputs(config: MoMoConfig, batch: int = 3, length: int = 7):
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, config.num_channels, config.image_size, config.image_size, generator=g)
    ids = torch.randint(5, config.vocab_size, (batch, length), generator=g)
    ids[:, 0] = 2
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 4:] = 0  # one padded item
    ids[0, 4:] = 0
    return pixels, ids, mask


@pytest.mark.parametrize("towers", ["shared", "separate"])
def test_entry_points_shapes_and_backward(test_config: MoMoConfig, towers: str) -> None:
    config = test_config.replace(towers=towers)
    model = MoMoEncoder(config)
    pixels, ids, mask = _inputs(config)
    n, d = config.num_patches, config.width
    image = model.encode_image(pixels)
    text = model.encode_text(ids, mask)
    pair = model.encode_pair(pixels, ids, mask)
    assert image.shape == (3, 1 + n, d)
    assert text.shape == (3, 7, d)
    assert pair.shape == (3, 2 + n + 7, d)
    assert model.text_offset() == 2 + n
    keep = torch.stack([torch.randperm(n)[: n // 4] for _ in range(3)])
    visible = model.forward_features(pixels, keep)
    assert visible.shape == (3, 1 + n // 4, d)
    img_emb, txt_emb = model.embed_image(pixels), model.embed_text(ids, mask)
    assert torch.allclose(img_emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt_emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    loss = image.square().mean() + text.square().mean() + pair.square().mean() + visible.mean()
    loss = loss + img_emb.sum() + txt_emb.sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    for out in (image, text, pair, visible):
        assert torch.isfinite(out).all()


def test_determinism_under_seed(test_config: MoMoConfig) -> None:
    torch.manual_seed(123)
    a = MoMoEncoder(test_config)
    torch.manual_seed(123)
    b = MoMoEncoder(test_config)
    pixels, ids, mask = _inputs(test_config)
    assert torch.equal(a.embed_image(pixels), b.embed_image(pixels))
    assert torch.equal(a.encode_pair(pixels, ids, mask), b.encode_pair(pixels, ids, mask))


@torch.no_grad()
def test_padding_invariance(test_config: MoMoConfig) -> None:
    model = MoMoEncoder(test_config).eval()
    pixels, ids, mask = _inputs(test_config, batch=2, length=6)
    padded_ids = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    short = model.encode_text(ids, mask)
    long = model.encode_text(padded_ids, padded_mask)
    real = mask.bool()
    assert (short[real] - long[:, :6][real]).abs().max() <= 1e-5
    pair_short = model.encode_pair(pixels, ids, mask)[:, 0]
    pair_long = model.encode_pair(pixels, padded_ids, padded_mask)[:, 0]
    assert (pair_short - pair_long).abs().max() <= 1e-5


@torch.no_grad()
def test_batch_invariance(test_config: MoMoConfig) -> None:
    model = MoMoEncoder(test_config).eval()
    pixels, ids, mask = _inputs(test_config, batch=4)
    batch_img = model.embed_image(pixels)
    batch_txt = model.embed_text(ids, mask)
    for i in range(4):
        alone_img = model.embed_image(pixels[i : i + 1])
        length = int(mask[i].sum())  # alone, an item needs no padding at all
        alone_txt = model.embed_text(ids[i : i + 1, :length], mask[i : i + 1, :length])
        assert (alone_img[0] - batch_img[i]).abs().max() <= 1e-5
        assert (alone_txt[0] - batch_txt[i]).abs().max() <= 1e-5


def test_model_heads(test_config: MoMoConfig) -> None:
    model = MoMoModel(test_config, head_specs={"itm": ITM_SPEC})
    model.add_head("vqa", HeadSpec(input="pair", labels=["yes", "no", "red"], task="vqa", hidden=32))
    model.add_head("topic", HeadSpec(input="text", labels=["a", "b"]))
    model.add_head("kind", HeadSpec(input="image", labels=["x", "y", "z", "w"]))
    pixels, ids, mask = _inputs(test_config)
    assert model.head_logits("itm", pixels, ids, mask).shape == (3, 2)
    assert model.head_logits("vqa", pixels, ids, mask).shape == (3, 3)
    assert model.head_logits("topic", input_ids=ids, attention_mask=mask).shape == (3, 2)
    assert model.head_logits("kind", pixels=pixels).shape == (3, 4)


def test_grad_checkpointing_gives_the_same_gradients(test_config: MoMoConfig) -> None:
    config = test_config
    pixels, ids, mask = _inputs(config)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        encoder = MoMoEncoder(config)
        encoder.set_grad_checkpointing(checkpointing)
        assert encoder.encoder.grad_checkpointing is checkpointing
        fused = encoder.encode_pair(pixels, ids, mask)
        (fused.square().mean() + encoder.encode_image(pixels).mean()).backward()
        grads.append({n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name

"""The MoMo shared encoder.

One transformer processes image patches, text tokens and the fused image+text sequence. Only the
embeddings (patches, tokens, positions, modality types) and the small heads are modality specific.
Every entry point returns features; losses live in `training.losses`.

Sequence layouts (D = width, N = patches, L = text length):
- image:  [IMG_CLS, patch_1 .. patch_N]                     -> (B, 1+N, D)
- text:   [CLS, tok_1 .. tok_{L-1}] (the tokenizer adds CLS)  -> (B, L, D)
- pair:   [FUSE_CLS, IMG_CLS, patches.., CLS, tokens..]       -> (B, 2+N+L, D)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from momo.config import MoMoConfig
from momo.head_modules import ClassifierHead, TokenHead, build_head
from momo.heads import HeadSpec
from momo.layers import MLP, ActFactory, Attention, AttnFactory, Block, MLPFactory, NormFactory, Tower

IMAGE_MODALITY = 0
TEXT_MODALITY = 1
FUSION_MODALITY = 2


class ImageEmbedding(nn.Module):
    """Conv patches + image CLS + learned factorised 2-D positions + image modality embedding."""

    def __init__(self, config: MoMoConfig):
        super().__init__()
        self.grid_size = config.grid_size
        self.patch = nn.Conv2d(config.num_channels, config.width, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        # Learned 2-D positions: pos[r, c] = row[r] + col[c], so the grid structure is explicit.
        self.row_pos = nn.Parameter(torch.zeros(config.grid_size, config.width))
        self.col_pos = nn.Parameter(torch.zeros(config.grid_size, config.width))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, config.width))

    def patch_positions(self) -> torch.Tensor:
        """(1, N, D) position embedding of every patch, row-major."""
        grid = self.row_pos[:, None, :] + self.col_pos[None, :, :]  # (g, g, D)
        return grid.reshape(1, -1, grid.shape[-1])

    def forward(
        self, pixels: torch.Tensor, modality: torch.Tensor, keep_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """pixels: (B, C, H, W) -> (B, 1+K, D); keep_indices: (B, K) visible patches, or all."""
        patches = self.patch(pixels).flatten(2).transpose(1, 2)  # (B, N, D)
        patches = patches + self.patch_positions()
        if keep_indices is not None:
            index = keep_indices.unsqueeze(-1).expand(-1, -1, patches.shape[-1])  # (B, K, D)
            patches = torch.gather(patches, 1, index)
        cls = (self.cls_token + self.cls_pos).expand(patches.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat([cls, patches], dim=1) + modality


class TextEmbedding(nn.Module):
    """Token embeddings (the first token is the tokenizer's [CLS]) + 1-D positions + text modality."""

    def __init__(self, config: MoMoConfig):
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.width)
        self.position = nn.Parameter(torch.zeros(1, config.max_text_len, config.width))

    def forward(self, input_ids: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """input_ids: (B, L) with L <= max_text_len -> (B, L, D)."""
        seq = input_ids.shape[1]
        return self.token(input_ids) + self.position[:, :seq] + modality


class MoMoEncoder(nn.Module):
    """The shared image+text encoder (or, with `towers="separate"`, the FLAVA-style ablation).

    The architecture's sizes come from `config` (data); the block's parts are code and are passed
    in, timm style, with today's defaults (see `momo.layers`). A `MoMoModel` built around an encoder
    with other parts is saved the same way, but `Artifact.load_model` rebuilds the defaults.
    """

    def __init__(
        self,
        config: MoMoConfig,
        *,
        attn_layer: AttnFactory = Attention,
        mlp_layer: MLPFactory = MLP,
        norm_layer: NormFactory = nn.LayerNorm,
        act_layer: ActFactory = nn.GELU,
    ):
        super().__init__()
        self.config = config
        self.image_embed = ImageEmbedding(config)
        self.text_embed = TextEmbedding(config)
        self.modality_embed = nn.Embedding(3, config.width)
        self.fusion_cls = nn.Parameter(torch.zeros(1, 1, config.width))

        def tower(depth: int) -> Tower:
            blocks = [
                Block(
                    config.width,
                    config.num_heads,
                    config.mlp_width,
                    dropout=config.dropout,
                    attention_dropout=config.attention_dropout,
                    eps=config.layer_norm_eps,
                    attn_layer=attn_layer,
                    mlp_layer=mlp_layer,
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                )
                for _ in range(depth)
            ]
            return Tower(blocks, config.width, config.layer_norm_eps, norm_layer)

        if config.towers == "shared":
            self.encoder = tower(config.num_layers)
        else:
            self.image_tower = tower(config.num_layers)
            self.text_tower = tower(config.num_layers)
            self.fusion_tower = tower(config.num_fusion_layers)
        # Projections into the joint, L2-normalised embedding space (retrieval, zero-shot).
        self.image_projection = nn.Linear(config.width, config.embed_dim, bias=False)
        self.text_projection = nn.Linear(config.width, config.embed_dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for param in (
            self.image_embed.cls_token,
            self.image_embed.row_pos,
            self.image_embed.col_pos,
            self.image_embed.cls_pos,
            self.text_embed.position,
            self.fusion_cls,
        ):
            nn.init.trunc_normal_(param, std=std)
        # Patch conv as a linear layer over flattened patches (as in MAE).
        weight = self.image_embed.patch.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.image_embed.patch.bias)  # type: ignore[arg-type]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every tower's block activations in backward (see `Tower`)."""
        for module in self.modules():
            if isinstance(module, Tower):
                module.grad_checkpointing = enable

    # --- towers ---------------------------------------------------------------------------------
    def _image_tower(self) -> Tower:
        return self.encoder if self.config.towers == "shared" else self.image_tower

    def _text_tower(self) -> Tower:
        return self.encoder if self.config.towers == "shared" else self.text_tower

    def _modality(self, index: int) -> torch.Tensor:
        return self.modality_embed.weight[index].view(1, 1, -1)  # (1, 1, D)

    # --- entry points (features only) -----------------------------------------------------------
    def forward_features(
        self, pixels: torch.Tensor, keep_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Image hidden states for all patches or only the visible subset (MAE-style pretraining).

        pixels: (B, C, H, W); keep_indices: (B, K) patch indices in [0, N) -> (B, 1+K, D).
        """
        tokens = self.image_embed(pixels, self._modality(IMAGE_MODALITY), keep_indices)
        return self._image_tower()(tokens)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1+N, D); index 0 is the image CLS."""
        return self.forward_features(pixels)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: (B, L) -> (B, L, D); index 0 is the text CLS."""
        tokens = self.text_embed(input_ids, self._modality(TEXT_MODALITY))
        return self._text_tower()(tokens, attention_mask.bool())

    def encode_pair(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The fused sequence -> (B, 2+N+L, D); index 0 is the fused CLS, text starts at 2+N."""
        image_tokens = self.image_embed(pixels, self._modality(IMAGE_MODALITY))  # (B, 1+N, D)
        text_tokens = self.text_embed(input_ids, self._modality(TEXT_MODALITY))  # (B, L, D)
        batch = image_tokens.shape[0]
        fuse_cls = (self.fusion_cls + self._modality(FUSION_MODALITY)).expand(batch, -1, -1)
        text_mask = attention_mask.bool()
        prefix_mask = torch.ones(batch, 1 + image_tokens.shape[1], dtype=torch.bool, device=text_mask.device)
        mask = torch.cat([prefix_mask, text_mask], dim=1)  # (B, 2+N+L)
        if self.config.towers == "shared":
            return self.encoder(torch.cat([fuse_cls, image_tokens, text_tokens], dim=1), mask)
        image_hidden = self.image_tower(image_tokens)
        text_hidden = self.text_tower(text_tokens, text_mask)
        return self.fusion_tower(torch.cat([fuse_cls, image_hidden, text_hidden], dim=1), mask)

    # --- joint embedding space ------------------------------------------------------------------
    def project_image(self, image_cls: torch.Tensor) -> torch.Tensor:
        """(B, D) image CLS -> (B, E) unit-norm embedding."""
        return F.normalize(self.image_projection(image_cls), dim=-1)

    def project_text(self, text_cls: torch.Tensor) -> torch.Tensor:
        """(B, D) text CLS -> (B, E) unit-norm embedding."""
        return F.normalize(self.text_projection(text_cls), dim=-1)

    def embed_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project_image(self.encode_image(pixels)[:, 0])

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.project_text(self.encode_text(input_ids, attention_mask)[:, 0])

    def text_offset(self) -> int:
        """Index of the text CLS inside a fused sequence (2 + N)."""
        return 2 + self.config.num_patches


def count_parameters(config: MoMoConfig) -> int:
    """Parameters of the encoder for `config`, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        encoder = MoMoEncoder(config)
    return sum(p.numel() for p in encoder.parameters())


class MoMoModel(nn.Module):
    """What an artifact holds: the encoder plus the heads the service uses.

    `heads` maps a head name (e.g. "itm", "vqa", "fashion") to a classifier over the CLS of its
    input kind; `head_specs` carries each head's input kind and label vocabulary (`heads.json`).
    `temperature` is the contrastive softmax temperature learned in pretraining, kept so that
    zero-shot classification can turn similarities into calibrated probabilities. `token_head` (the
    pretraining MLM head, optional) lets an evaluation measure the artifact's held-out MLM loss.
    """

    def __init__(
        self,
        config: MoMoConfig,
        encoder: MoMoEncoder | None = None,
        head_specs: dict[str, HeadSpec] | None = None,
        temperature: float = 0.07,
        with_token_head: bool = False,
    ):
        super().__init__()
        self.config = config
        self.encoder = encoder if encoder is not None else MoMoEncoder(config)
        self.head_specs: dict[str, HeadSpec] = dict(head_specs or {})
        self.heads = nn.ModuleDict(
            {name: build_head(config.width, spec) for name, spec in self.head_specs.items()}
        )
        self.temperature = temperature
        self.token_head = TokenHead(config.width, config.vocab_size) if with_token_head else None

    def token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Text hidden states (…, D) -> vocabulary logits (…, V) through the MLM head."""
        if self.token_head is None:
            raise ValueError("this model has no token head (artifacts before momo-tiny:v2 do not keep it)")
        return self.token_head(hidden, self.encoder.text_embed.token.weight)

    def add_head(self, name: str, spec: HeadSpec, head: ClassifierHead | None = None) -> ClassifierHead:
        head = head if head is not None else build_head(self.config.width, spec)
        self.head_specs[name] = spec
        self.heads[name] = head
        return head

    def head_features(
        self,
        kind: str,
        pixels: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The (B, D) CLS a head of input `kind` reads."""
        if kind == "image":
            assert pixels is not None
            return self.encoder.encode_image(pixels)[:, 0]
        if kind == "text":
            assert input_ids is not None and attention_mask is not None
            return self.encoder.encode_text(input_ids, attention_mask)[:, 0]
        if kind == "pair":
            assert pixels is not None and input_ids is not None and attention_mask is not None
            return self.encoder.encode_pair(pixels, input_ids, attention_mask)[:, 0]
        raise ValueError(f"unknown head input kind {kind!r}")

    def head_logits(
        self,
        name: str,
        pixels: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, num_labels) of head `name`."""
        spec = self.head_specs[name]
        return self.heads[name](self.head_features(spec.input, pixels, input_ids, attention_mask))

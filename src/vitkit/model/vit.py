"""The Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2020).

Read top to bottom: an image is cut into patches, each patch becomes a token, a class token is
prepended, position embeddings are added, pre-norm Transformer blocks mix the tokens, and a linear
head classifies the pooled result. Everything is configured by one `ViTConfig`.

The paper's descendants are a line or two each, off by default: register tokens and DeiT's
distillation token (more prefix tokens), layer scale (`LayerScale`), qk-norm (in `Attention`), a
pre-norm before the blocks (CLIP), and attention pooling (`MAPHead`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitkit.model import flexi, naflex, native, position, stems, window
from vitkit.model.config import ViTConfig
from vitkit.model.noise import uniform as noise_uniform
from vitkit.model.normalization import HALF


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) -> patch tokens (B, H/ph * W/pw, dim).

    "conv" is the paper's strided convolution; "linear-ln" is the write-up's code: flatten each
    patch as (ph, pw, c), LayerNorm it, project linearly, LayerNorm again. "conv-stem" (Xiao et
    al.) and "resnet" (the paper's hybrid) put a CNN (`backbone`, model/stems.py) before the strided
    convolution, which then covers patch / stride of its feature map (1x1 for a stride-P CNN).
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.kind = config.patch_embed
        self.patch = config.patch_hw
        self.flexi: tuple[int, int] | None = None  # another patch size to run at (`ViT.set_patch_size`)
        patch_dim = config.in_channels * self.patch[0] * self.patch[1]
        if self.kind != "linear-ln":  # CLIP's pre-norm models have no bias here
            self.backbone, channels = stems.backbone(config)
            kernel = (self.patch[0] // config.stem_stride, self.patch[1] // config.stem_stride)
            self.proj = nn.Conv2d(channels, config.dim, kernel, stride=kernel, bias=not config.pre_norm)
        else:
            self.norm_in = nn.LayerNorm(patch_dim, eps=config.norm_eps)
            self.proj = nn.Linear(patch_dim, config.dim)
            self.norm_out = nn.LayerNorm(config.dim, eps=config.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flexi is not None and self.flexi != self.patch:  # FlexiViT: the kernel resized on the fly
            kernel = flexi.resize_kernel(self.proj.weight, self.flexi)
            return F.conv2d(x, kernel, self.proj.bias, stride=self.flexi).flatten(2).transpose(1, 2)
        if self.kind != "linear-ln":
            return self.proj(self.backbone(x)).flatten(2).transpose(1, 2)
        b, c, h, w = x.shape
        ph, pw = self.patch
        x = x.reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 2, 4, 3, 5, 1)
        x = x.reshape(b, (h // ph) * (w // pw), ph * pw * c)
        return self.norm_out(self.proj(self.norm_in(x)))


class Layout(NamedTuple):
    """Where the tokens of a batch sit, for the blocks that need it: the patch grid of a batch of
    images (windowed attention, relative positions), the prefix count, and for NaFlex sequences a
    (B, tokens) mask that is False for padding (attention ignores those keys)."""

    grid: tuple[int, int] | None
    prefix: int
    valid: torch.Tensor | None = None  # or (B, tokens, tokens): who attends to whom (packed images)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    The fast path is `F.scaled_dot_product_attention` (fused kernels on CPU and GPU). The explicit
    softmax(q k^T / sqrt(d)) v runs when the caller asks for the attention probabilities, or when
    `fused` is off (`vitkit.model.fast.use_training_kernels`: faster to train on CPUs). `window`:
    attention inside windows of that many tokens a side (model/window.py); 0 is global.
    """

    def __init__(self, config: ViTConfig, window: int = 0):
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.inner_dim // config.heads
        self.qkv = nn.Linear(config.dim, 3 * config.inner_dim, bias=config.qkv_bias)
        qk_norm = config.qk_norm
        self.q_norm = nn.LayerNorm(self.head_dim, eps=config.norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=config.norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(config.inner_dim, config.dim)
        self.attn_dropout = config.attn_dropout
        self.proj_drop = nn.Dropout(config.dropout)
        self.fused = True
        self.window = window
        self.rel_pos_h = self.rel_pos_w = None
        if config.rel_pos:  # SAM's decomposed relative positions, one table per axis of the window (or grid)
            rows, cols = (window, window) if window else config.grid
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rows - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * cols - 1, self.head_dim))

    def forward(self, x: torch.Tensor, return_attention: bool = False, queries: int | None = None,
                layout: Layout | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`queries`: only the first this many tokens attend (and come out); all are attended to.
        `layout`: the grid (for windows and relative positions) and the padding of NaFlex batches."""
        if self.window and queries is None and layout is not None and layout.grid is not None:
            if return_attention:
                raise ValueError("a windowed block has no (tokens x tokens) attention map; explain a model "
                                 "without window_size, or ask forward_intermediates for its global blocks only")
            return window.windowed_attention(self, x, layout.grid, layout.prefix), None
        q, k, v = self.project(x, queries)
        bias = None
        if layout is not None and layout.valid is not None:  # padding (or another packed image) is not attended to
            bias = layout.valid[:, None, None, :] if layout.valid.ndim == 2 else layout.valid[:, None]
        elif self.rel_pos_h is not None:
            bias = window.relative_bias(q, self.rel_pos_h, self.rel_pos_w, self._grid(layout))
        out, probs = self.attend(q, k, v, bias, return_attention)
        return self.output(window.heads_to_tokens(out)), probs

    def project(self, x: torch.Tensor, queries: int | None = None) -> tuple[torch.Tensor, ...]:
        """Tokens (B, N, dim) -> q (of the first `queries` tokens), k, v, each (B, heads, N, head_dim)."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.q_norm(q[:, :, :queries]), self.k_norm(k), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
               return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """softmax(q k^T / sqrt(d) + bias) v, (B, heads, queries, head_dim); a boolean `bias` is a
        mask (False: not attended to). The probabilities too when asked for."""
        dropout = self.attn_dropout if self.training else 0.0
        if return_attention or not self.fused:
            scores = q * self.head_dim**-0.5 @ k.transpose(-2, -1)
            if bias is not None:
                scores = scores.masked_fill(~bias, float("-inf")) if bias.dtype == torch.bool else scores + bias
            probs = scores.softmax(dim=-1)
            out = F.dropout(probs, dropout, self.training) @ v
            return out, probs if return_attention else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout), None

    def output(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj_drop(self.proj(tokens))

    def _grid(self, layout: Layout | None) -> tuple[int, int]:
        if layout is None or layout.grid is None:
            raise ValueError("relative position terms need the patch grid: images in, not patch sequences")
        return layout.grid


class MLP(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.dim, config.mlp_dim)
        self.act = nn.GELU(approximate="tanh" if config.act == "gelu-tanh" else "none")
        self.fc2 = nn.Linear(config.mlp_dim, config.dim)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch, starting small so that deep models start
    close to the identity (CaiT; DINOv2)."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm encoder block: x + Attention(LN(x)), then x + MLP(LN(x)) (each branch scaled by
    a LayerScale if `init_values` is set)."""

    def __init__(self, config: ViTConfig, drop_path: float, index: int = 0):
        super().__init__()
        scale = config.init_values
        self.norm1 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        windowed = config.window_size and index not in config.global_blocks
        self.attn = Attention(config, config.window_size if windowed else 0)
        self.ls1 = LayerScale(config.dim, scale) if scale else nn.Identity()
        self.norm2 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.mlp = MLP(config)
        self.ls2 = LayerScale(config.dim, scale) if scale else nn.Identity()
        self.drop_path = DropPath(drop_path)
        self.index = index  # the block's place: its stochastic depth draws differ from the others'

    def forward(self, x: torch.Tensor, return_attention: bool = False, queries: int | None = None,
                noise: torch.Tensor | None = None, layout: Layout | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`queries`: compute only the first this many output tokens (`ViTConfig.head_tokens`).
        `noise`: a key per image for stochastic depth (model/noise.py), else torch's stream.
        `layout`: the grid and padding of the batch (`Layout`)."""
        y, probs = self.attn(self.norm1(x), return_attention, queries, layout)
        x = x[:, :queries] + self.drop_path(self.ls1(y), noise, 2 * self.index + 1)
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))), noise, 2 * self.index + 2)
        return x, probs


class DropPath(nn.Module):
    """Stochastic depth, per image (torchvision's "row" mode): a residual branch dropped with
    probability `rate`, the kept ones scaled by 1 / (1 - rate); drawn from each image's key."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None, salt: int = 0) -> torch.Tensor:
        if not (self.training and self.rate):
            return x
        u = noise_uniform(noise, 1, salt) if noise is not None else torch.rand(x.shape[0], 1, device=x.device)
        keep = (u >= self.rate).to(x.dtype) / (1 - self.rate)
        return x * keep.view(-1, *[1] * (x.ndim - 1))

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class MAPHead(nn.Module):
    """Multihead attention pooling (big_vision's MAPHead; timm's AttentionPoolLatent, whose names
    these are): one learned query attends to the tokens, then a residual MLP refines the result.
    A learned summary instead of the class token or a plain mean (SigLIP)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.heads = config.heads
        self.latent = nn.Parameter(torch.zeros(1, 1, config.dim))  # the probe
        self.q = nn.Linear(config.dim, config.dim)
        self.kv = nn.Linear(config.dim, 2 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """`valid`: (B, N), False for the padding of a NaFlex batch, which the probe ignores."""
        b, n, d = x.shape
        q = self.q(self.latent).reshape(1, 1, self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        mask = None if valid is None else valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q.expand(b, -1, -1, -1), k, v, attn_mask=mask)
        out = self.proj(out.transpose(1, 2).reshape(b, 1, d))
        out = out + self.mlp(self.norm(out))
        return out[:, 0]


def _record_grid(module: ViT, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """A state dict says which patch grid its position table is for (in its metadata, no tensor)."""
    local_metadata["pos_grid"] = list(module.config.grid)


class Intermediates(NamedTuple):
    """What `ViT.forward_intermediates` returns, one entry per chosen block."""

    features: list[torch.Tensor]  # patch tokens (B, patches, dim), or a map (B, dim, rows, cols)
    prefix: list[torch.Tensor]  # the class/distillation/register tokens (B, prefix, dim)
    attentions: list[torch.Tensor]  # (B, heads, tokens, tokens) if asked for, else empty


class ViT(nn.Module):
    """Vision Transformer. `model(images)` gives logits, or features when num_classes=0.

    `model(images, return_attention=True)` gives (logits, [per-layer attention probabilities of
    shape (batch, heads, tokens, tokens)]). Without it, a class-token model's last block computes
    only the tokens the head reads (`ViTConfig.head_tokens`), so hooks on that block or on the
    final norm see (batch, 1 or 2, dim); `forward_tokens` gives every token. A distilled (DeiT)
    model in training mode gives the pair (class-token logits, distillation-token logits) instead
    of logits, for a distillation loss; in eval mode their average, as DeiT does.
    """

    def __init__(self, config: ViTConfig | None = None, **overrides):
        super().__init__()
        config = (config or ViTConfig()).replace(**overrides) if overrides else (config or ViTConfig())
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim)) if config.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, config.dim)) if config.distilled else None
        self.reg_token = nn.Parameter(torch.zeros(1, config.reg_tokens, config.dim)) if config.reg_tokens else None
        tokens = config.pos_prefix_rows + config.num_patches
        if config.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, tokens, config.dim))
        elif config.pos_embed == "none":  # positions from relative terms alone (SAM at 224 px)
            self.pos_embed = None
        else:  # fixed, so not saved with the weights
            self.register_buffer("pos_embed", self._sincos(config.grid), persistent=False)
        self.pos_drop = nn.Dropout(config.emb_dropout)
        self.norm_pre = nn.LayerNorm(config.dim, eps=config.norm_eps) if config.pre_norm else nn.Identity()
        self.grad_checkpointing = False
        # The input normalization the weights expect: vitkit's own for a new model (half: [-1, 1]);
        # vitkit.load sets what the weights record, a run what it trained with. Saved with the weights.
        self.normalization = HALF
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(Block(config, rate, i) for i, rate in enumerate(rates))  # deeper drops more
        final_norm = not (config.fc_norm or config.neck_dim)  # SAM's neck ends in its own norms
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps) if final_norm else nn.Identity()
        self.neck = window.neck(config.dim, config.neck_dim) if config.neck_dim else None
        self.fc_norm = nn.LayerNorm(config.dim, eps=config.norm_eps) if config.fc_norm else nn.Identity()
        self.attn_pool = MAPHead(config) if config.pool == "map" else None
        if config.representation_size:
            self.pre_logits = nn.Sequential(nn.Linear(config.dim, config.representation_size), nn.Tanh())
        else:
            self.pre_logits = nn.Identity()
        self.head = nn.Linear(config.feature_dim, config.num_classes) if config.num_classes else nn.Identity()
        self.head_dist = None
        if config.distilled:  # DeiT's second head, on the distillation token
            self.head_dist = nn.Linear(config.dim, config.num_classes) if config.num_classes else nn.Identity()
        self.reset_parameters()
        self._register_state_dict_hook(_record_grid)

    # -- initialisation (big_vision's choices; the head starts at zero) ---------------------------
    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                nn.init.trunc_normal_(module.weight, std=fan_in**-0.5)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, LayerScale):
                nn.init.constant_(module.gamma, module.init_values)
            elif isinstance(module, MAPHead):
                nn.init.trunc_normal_(module.latent, std=module.latent.shape[-1] ** -0.5)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.zeros_(self.cls_token)
        for token in (self.dist_token, self.reg_token):  # random: equal ones would stay equal
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)
        for head in (self.head, self.head_dist):
            if isinstance(head, nn.Linear):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, return_attention: bool = False, noise: torch.Tensor | None = None):
        """Logits (and with `return_attention` every block's attention). `noise`: one key per image
        (model/noise.py) for patch dropout and stochastic depth in training: each image's draws
        then depend on its key alone, not on the batch it is in nor on torch's random stream."""
        if return_attention:
            tokens, attentions, layout = self._tokens(x, return_attention=True, noise=noise)
            return self.forward_head(tokens, layout.valid), attentions
        # Only the tokens that the head reads (config.head_tokens) leave the last block: the same
        # logits up to float rounding for about 9/12 of one block's work less (6% of ViT-B/16).
        tokens, _, layout = self._tokens(x, last_queries=self.config.head_tokens, noise=noise)
        return self.forward_head(tokens, layout.valid)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images -> the tokens the first block sees (B, prefix + patches, dim; before patch
        dropout), and the grid."""
        grid = self._check_input(x)
        x = self.patch_embed(x)
        prefix = [t.expand(x.shape[0], -1, -1).to(x.dtype)
                  for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]
        x = torch.cat([*prefix, x], dim=1)
        if self.pos_embed is not None:
            pos = self.position_embedding(grid).to(x.dtype)
            if self.config.no_embed_class:  # the prefix tokens get no position
                pos = F.pad(pos, (0, 0, self.config.num_prefix_tokens, 0))
            x = x + pos
        return self.norm_pre(self.pos_drop(x)), grid

    def _embed(self, x: torch.Tensor | naflex.Patches) -> tuple[torch.Tensor, Layout]:
        """Images or NaFlex patch sequences -> the first block's tokens and where they sit."""
        prefix = self.config.num_prefix_tokens
        if isinstance(x, naflex.Patches):
            tokens, valid = naflex.embed(self, x)
            return tokens, Layout(None, prefix, valid)
        tokens, grid = self.embed(x)
        return tokens, Layout(grid, prefix)

    def drop_patches(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """`patch_dropout`: a random subset of each image's patch tokens, the same count for every
        image (so shapes stay static); the prefix tokens always stay. After `norm_pre`, which is per
        token, so the same as timm's order. Drawn from each image's key in `noise` when given."""
        rate = self.config.patch_dropout
        if not (self.training and rate):
            return x
        n = self.config.num_prefix_tokens
        prefix, patches = x[:, :n], x[:, n:]
        keep = max(1, int(patches.shape[1] * (1 - rate)))
        draw = noise_uniform(noise, patches.shape[1], 0) if noise is not None else \
            torch.randn(patches.shape[:2], device=x.device)  # timm's draw
        index = draw.argsort(dim=1)[:, :keep]
        patches = patches.gather(1, index.unsqueeze(-1).expand(-1, -1, patches.shape[2]))
        return torch.cat([prefix, patches], dim=1)

    def forward_tokens(self, x: torch.Tensor, return_attention: bool = False, last_queries: int | None = None,
                       noise: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """All output tokens after the final norm (B, prefix + patches, dim; fewer patches under
        patch dropout in training), and attentions. `last_queries`: only the first this many
        tokens out of the last block (whose attention then has this many rows)."""
        tokens, attentions, _ = self._tokens(x, return_attention, last_queries, noise)
        return tokens, attentions

    def _tokens(self, x: torch.Tensor | naflex.Patches, return_attention: bool = False,
                last_queries: int | None = None, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor], Layout]:
        """`forward_tokens`, and the batch's layout (a NaFlex batch's padding, after patch dropout)."""
        x, layout = self._embed(x)
        if layout.valid is None:
            x = self.drop_patches(x, noise)
        elif self.training and self.config.patch_dropout:
            x, valid = naflex.drop_patches(x, layout.valid, layout.prefix, self.config.patch_dropout, noise)
            layout = layout._replace(valid=valid)
        attentions = []
        for i, block in enumerate(self.blocks):
            queries = last_queries if i == len(self.blocks) - 1 else None
            x, probs = self._block(block, x, return_attention, queries, noise, layout)
            if return_attention:
                attentions.append(probs)
        return self.final(x, layout.grid), attentions, layout

    def forward_packed(self, packed: naflex.Packed) -> torch.Tensor:
        """Logits (images, classes) of NaViT-packed images (`naflex.pack`): several images a sequence,
        each attending to its own tokens only, pooled over its own tokens."""
        x, mask = naflex.embed_packed(self, packed)
        layout = Layout(None, 0, mask)
        for block in self.blocks:
            x, _ = self._block(block, x, False, None, None, layout)
        return self.head(self.pre_logits(self.fc_norm(naflex.pool_packed(self, self.final(x, None), packed))))

    def final(self, x: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
        """The final norm of every token; with SAM's neck, its map's channels as the tokens."""
        x = self.norm(x)
        if self.neck is None:
            return x
        b, _, d = x.shape
        x = self.neck(x.transpose(1, 2).reshape(b, d, *grid))
        return x.flatten(2).transpose(1, 2)

    def _block(self, block: Block, x: torch.Tensor, return_attention: bool, queries: int | None = None,
               noise: torch.Tensor | None = None, layout: Layout | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One block; under gradient checkpointing its activations are recomputed in backward."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, return_attention, queries, noise, layout, use_reentrant=False)
        return block(x, return_attention, queries, noise, layout)

    def set_patch_size(self, patch: int | None) -> None:
        """Run at `patch` x `patch` patches from now on (None: the model's own), the stored kernel
        resized on the fly by FlexiViT's pseudo-inverse and the position table resampled to the new
        grid, both differentiably: what `--flexi-patch` trains with. `flexi.at_patch_size` makes a
        model with the resized weights stored instead."""
        if patch is not None:
            flexi.check_patch_size(self.config, patch)
        self.patch_embed.flexi = None if patch is None else (patch, patch)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Keep only each block's input in training and recompute the rest in backward: memory
        for about one more forward pass. No effect in eval mode or without gradients."""
        self.grad_checkpointing = enable

    def forward_head(self, tokens: torch.Tensor, valid: torch.Tensor | None = None):
        """Final tokens -> logits. DeiT's two heads: see the class docstring. `valid`: a NaFlex
        batch's (B, tokens) mask, False for padding (pooled over the valid tokens only)."""
        if self.head_dist is None or not self.config.num_classes:
            return self.head(self.pool(tokens, valid))
        logits, dist = self.head(tokens[:, 0]), self.head_dist(tokens[:, 1])
        return (logits, dist) if self.training else (logits + dist) / 2

    def pool(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens -> one feature vector per image (what the head classifies); with `valid` (NaFlex
        padding), over the valid tokens only."""
        patches = tokens[:, self.config.num_prefix_tokens:]
        if valid is not None:
            pooled = naflex.pool(self, tokens, valid)
        elif self.config.distilled:  # class and distillation tokens, as DeiT's pre-logits
            pooled = (tokens[:, 0] + tokens[:, 1]) / 2
        elif self.config.pool == "cls":
            pooled = tokens[:, 0]
        elif self.config.pool == "mean":
            pooled = patches.mean(dim=1)
        elif self.config.pool == "map":
            pooled = self.attn_pool(patches)
        else:
            pooled = tokens.mean(dim=1)
        return self.pre_logits(self.fc_norm(pooled))

    def forward_intermediates(self, x: torch.Tensor, layers: int | Sequence[int] | None = None,
                              output: Literal["tokens", "nchw"] = "tokens", norm: bool = False,
                              attention: bool = False) -> Intermediates:
        """The outputs of chosen blocks, for dense prediction and probing.

        `layers`: None for every block, an int n for the last n, or block indices (negative ones
        count from the end). `output`: "tokens" gives the patch tokens (B, patches, dim), "nchw"
        a 2-D map (B, dim, rows, cols): what a detection or segmentation head reads (ViTDet, SAM).
        `norm`: pass each through the final norm (with SAM's neck: the neck, as timm does). The prefix
        tokens come separately. `attention`: also the attention probabilities of the chosen blocks
        only; the others keep the fused kernel, which stores no tokens x tokens matrix. Blocks
        after the last chosen one are not run. Patch dropout does not apply: the grid stays whole.
        """
        if output not in ("tokens", "nchw"):
            raise ValueError(f"output={output!r}: use 'tokens' or 'nchw'")
        if not isinstance(x, torch.Tensor):
            raise ValueError("forward_intermediates takes a batch of images of one size, not NaFlex patches; run "
                             "each image alone at its own size (a model with dynamic_size=True)")
        chosen = self._layer_indices(layers)
        x, (rows, cols) = self.embed(x)
        prefix = self.config.num_prefix_tokens
        layout = Layout((rows, cols), prefix)
        found = Intermediates([], [], [])
        for i, block in enumerate(self.blocks[: chosen[-1] + 1]):
            x, probs = self._block(block, x, attention and i in chosen, layout=layout)
            if i not in chosen:
                continue
            y = self.final(x, (rows, cols)) if norm else x
            patches = y[:, prefix:]
            if output == "nchw":
                patches = patches.transpose(1, 2).reshape(y.shape[0], y.shape[2], rows, cols)
            found.features.append(patches)
            found.prefix.append(y[:, :prefix])
            if attention:
                found.attentions.append(probs)
        return found

    def _layer_indices(self, layers: int | Sequence[int] | None) -> list[int]:
        depth = self.config.depth
        if layers is None:
            return list(range(depth))
        if isinstance(layers, int):
            if not 1 <= layers <= depth:
                raise ValueError(f"layers={layers}: the last n blocks needs 1 <= n <= {depth}")
            return list(range(depth - layers, depth))
        bad = [i for i in layers if not -depth <= i < depth]
        if bad or not layers:
            raise ValueError(f"layers {list(layers)}: block indices must lie in [-{depth}, {depth - 1}]")
        return sorted({i % depth for i in layers})

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The (1, prefix + patches, dim) table for a patch grid, resampled if it is not native
        (None for a model without one)."""
        if grid == self.config.grid or self.pos_embed is None:
            return self.pos_embed
        if isinstance(self.pos_embed, nn.Parameter):
            return position.resample(self.pos_embed, grid, self.config.pos_prefix_rows,
                                     old_grid=self.config.grid)
        return self._sincos(grid).to(self.pos_embed.device)

    def _sincos(self, grid: tuple[int, int]) -> torch.Tensor:
        table = position.sincos_2d(grid, self.config.dim)
        prefix = torch.zeros(self.config.pos_prefix_rows, self.config.dim)
        return torch.cat([prefix, table])[None]

    def _check_input(self, x: torch.Tensor) -> tuple[int, int]:
        cfg = self.config
        if x.ndim != 4:
            hint = " (one image? add a batch axis: x[None])" if x.ndim == 3 else ""
            raise ValueError(f"expected a 4-D batch of images (batch, channels, height, width), "
                             f"got a {x.ndim}-D tensor of shape {tuple(x.shape)}{hint}")
        _, c, h, w = x.shape
        if c != cfg.in_channels:
            raise ValueError(f"the model takes {cfg.in_channels}-channel images, got {c} channels; "
                             f"convert the images or build the model with in_channels={c}")
        (ph, pw), (eh, ew) = self.patch_embed.flexi or cfg.patch_hw, cfg.image_hw
        if cfg.dynamic_size:
            if h % ph or w % pw:
                raise ValueError(f"image size {h}x{w} is not divisible by the patch size {ph}x{pw}; "
                                 f"resize or pad to a multiple, e.g. {-(-h // ph) * ph}x{-(-w // pw) * pw}")
        elif (h, w) != (eh, ew):
            raise ValueError(f"the model was built for {eh}x{ew} images, got {h}x{w}; resize the "
                             f"input, or build the model with dynamic_size=True")
        return h // ph, w // pw

    # -- weights ------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        """Weights for another patch grid: their position embedding resampled bicubically, from the
        grid a vitkit state dict records (a 12x16 table into a 16x12 model is resampled, not copied
        row by row), else from the table's size (other libraries' square grids)."""
        key, source = prefix + "pos_embed", local_metadata.get("pos_grid")
        if isinstance(self.pos_embed, nn.Parameter) and key in state_dict:
            table = state_dict[key]
            moved = tuple(source) != self.config.grid if source else table.shape != self.pos_embed.shape
            gh, gw = self.config.grid
            if not source and not moved and gh != gw:
                warnings.warn(f"a position table for {gh * gw} patches with no recorded grid: taken to be this "
                              f"model's {gh}x{gw} grid (a state dict from model.state_dict() records its grid, "
                              f"so a {gw}x{gh} one is resampled)", stacklevel=3)
            if moved and table.shape[-1] == self.pos_embed.shape[-1]:
                state_dict[key] = position.resample(table, self.config.grid, self.config.pos_prefix_rows,
                                                    old_grid=tuple(source) if source else None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write `config.json` + `model.safetensors`, which `vitkit.load(directory)` reads back."""
        return native.save_pretrained(self, directory, extra)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- what an optimizer needs to know (timm's no_weight_decay / group_matcher) ----------------
    def no_weight_decay(self) -> set[str]:
        """Parameters that weight decay must not pull to zero: norms, biases, the position
        embedding and the learned tokens."""
        return {name for name, p in self.named_parameters()
                if p.ndim <= 1 or name == "pos_embed" or name.endswith("_token")}

    def param_layer(self, name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: 0 for the embeddings and tokens,
        i + 1 for block i, depth + 1 for the final norm and the head."""
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        if name.startswith(("patch_embed", "pos_embed", "norm_pre")) or name.endswith("_token"):
            return 0
        return self.config.depth + 1

    def extra_repr(self) -> str:
        return json.dumps({k: v for k, v in self.config.to_dict().items()
                           if v != getattr(ViTConfig, k, None)})

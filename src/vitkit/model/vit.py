"""The Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2020).

Read top to bottom: an image is cut into patches, each patch becomes a token, a class token is
prepended, position embeddings are added, pre-norm Transformer blocks mix the tokens, and a linear
head classifies the pooled result. Everything is configured by one `ViTConfig`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from vitkit.model import position
from vitkit.model.config import ViTConfig


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) -> patch tokens (B, H/ph * W/pw, dim).

    "conv" is the paper's strided convolution; "linear-ln" is the write-up's code: flatten each
    patch as (ph, pw, c), LayerNorm it, project linearly, LayerNorm again.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.kind = config.patch_embed
        self.patch = config.patch_hw
        patch_dim = config.in_channels * self.patch[0] * self.patch[1]
        if self.kind == "conv":
            self.proj = nn.Conv2d(config.in_channels, config.dim, self.patch, stride=self.patch)
        else:
            self.norm_in = nn.LayerNorm(patch_dim, eps=config.norm_eps)
            self.proj = nn.Linear(patch_dim, config.dim)
            self.norm_out = nn.LayerNorm(config.dim, eps=config.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "conv":
            return self.proj(x).flatten(2).transpose(1, 2)
        b, c, h, w = x.shape
        ph, pw = self.patch
        x = x.reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 2, 4, 3, 5, 1)
        x = x.reshape(b, (h // ph) * (w // pw), ph * pw * c)
        return self.norm_out(self.proj(self.norm_in(x)))


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    The fast path is `F.scaled_dot_product_attention` (fused kernels on CPU and GPU). Only when the
    caller asks for the attention probabilities do we compute softmax(q k^T / sqrt(d)) explicitly.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.inner_dim // config.heads
        self.qkv = nn.Linear(config.dim, 3 * config.inner_dim, bias=config.qkv_bias)
        self.proj = nn.Linear(config.inner_dim, config.dim)
        self.attn_dropout = config.attn_dropout
        self.proj_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        dropout = self.attn_dropout if self.training else 0.0
        probs = None
        if return_attention:
            probs = (q * self.head_dim**-0.5 @ k.transpose(-2, -1)).softmax(dim=-1)
            out = F.dropout(probs, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.proj_drop(self.proj(out)), probs


class MLP(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.dim, config.mlp_dim)
        self.act = nn.GELU(approximate="tanh" if config.act == "gelu-tanh" else "none")
        self.fc2 = nn.Linear(config.mlp_dim, config.dim)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm encoder block: x + Attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: ViTConfig, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.mlp = MLP(config)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, probs = self.attn(self.norm1(x), return_attention)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, probs


class ViT(nn.Module):
    """Vision Transformer. `model(images)` gives logits, or features when num_classes=0.

    `model(images, return_attention=True)` gives (logits, [per-layer attention probabilities of
    shape (batch, heads, tokens, tokens)]).
    """

    def __init__(self, config: ViTConfig | None = None, **overrides):
        super().__init__()
        config = (config or ViTConfig()).replace(**overrides) if overrides else (config or ViTConfig())
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim)) if config.class_token else None
        tokens = config.num_prefix_tokens + config.num_patches
        if config.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, tokens, config.dim))
        else:  # fixed, so not saved with the weights
            self.register_buffer("pos_embed", self._sincos(config.grid), persistent=False)
        self.pos_drop = nn.Dropout(config.emb_dropout)
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(Block(config, rate) for rate in rates)  # deeper drops more
        self.norm = nn.Identity() if config.fc_norm else nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.fc_norm = nn.LayerNorm(config.dim, eps=config.norm_eps) if config.fc_norm else nn.Identity()
        if config.representation_size:
            self.pre_logits = nn.Sequential(nn.Linear(config.dim, config.representation_size), nn.Tanh())
        else:
            self.pre_logits = nn.Identity()
        self.head = nn.Linear(config.feature_dim, config.num_classes) if config.num_classes else nn.Identity()
        self.reset_parameters()

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
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.zeros_(self.cls_token)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, return_attention: bool = False):
        tokens, attentions = self.forward_tokens(x, return_attention)
        logits = self.head(self.pool(tokens))
        return (logits, attentions) if return_attention else logits

    def forward_tokens(self, x: torch.Tensor, return_attention: bool = False
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """All output tokens after the final norm (B, prefix + patches, dim), and attentions."""
        grid = self._check_input(x)
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = self.pos_drop(x + self.position_embedding(grid).to(x.dtype))
        attentions = []
        for block in self.blocks:
            x, probs = block(x, return_attention)
            if return_attention:
                attentions.append(probs)
        return self.norm(x), attentions

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens -> one feature vector per image (what the head classifies)."""
        if self.config.pool == "cls":
            pooled = tokens[:, 0]
        elif self.config.pool == "mean":
            pooled = tokens[:, self.config.num_prefix_tokens:].mean(dim=1)
        else:
            pooled = tokens.mean(dim=1)
        return self.pre_logits(self.fc_norm(pooled))

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The (1, prefix + patches, dim) table for a patch grid, resampled if it is not native."""
        if grid == self.config.grid:
            return self.pos_embed
        if isinstance(self.pos_embed, nn.Parameter):
            return position.resample(self.pos_embed, grid, self.config.num_prefix_tokens,
                                     old_grid=self.config.grid)
        return self._sincos(grid).to(self.pos_embed.device)

    def _sincos(self, grid: tuple[int, int]) -> torch.Tensor:
        table = position.sincos_2d(grid, self.config.dim)
        prefix = torch.zeros(self.config.num_prefix_tokens, self.config.dim)
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
        (ph, pw), (eh, ew) = cfg.patch_hw, cfg.image_hw
        if cfg.dynamic_size:
            if h % ph or w % pw:
                raise ValueError(f"image size {h}x{w} is not divisible by the patch size {ph}x{pw}; "
                                 f"resize or pad to a multiple, e.g. {-(-h // ph) * ph}x{-(-w // pw) * pw}")
        elif (h, w) != (eh, ew):
            raise ValueError(f"the model was built for {eh}x{ew} images, got {h}x{w}; resize the "
                             f"input, or build the model with dynamic_size=True")
        return h // ph, w // pw

    # -- weights ------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Weights trained at another resolution: resample their position embedding bicubically."""
        key = prefix + "pos_embed"
        if (isinstance(self.pos_embed, nn.Parameter) and key in state_dict
                and state_dict[key].shape != self.pos_embed.shape
                and state_dict[key].shape[-1] == self.pos_embed.shape[-1]):
            state_dict[key] = position.resample(state_dict[key], self.config.grid,
                                                self.config.num_prefix_tokens)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write `config.json` + `model.safetensors`, which `vitkit.load(directory)` reads back."""
        from vitkit.weights.native import save_pretrained

        return save_pretrained(self, directory, extra)

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

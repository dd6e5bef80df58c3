"""timm's `VisionTransformer` state dicts <-> vitkit.

vitkit's parameter names follow timm's, so the conversion is a check of what vitkit can express
plus reading the architecture from the shapes. timm's weights do not record the number of heads:
it comes from the model name in a config.json beside them, an override, or the paper's sizes.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from vitkit.model.config import ViTConfig
from vitkit.model.vit import ViT

# Table 1 of the paper (and DeiT): width -> heads. Used only when nothing else says.
PAPER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
TIMM_SIZE_HEADS = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16}
UNSUPPORTED = ("reg_token", "ls1.gamma", "norm_pre.weight", "attn.q_norm.weight", "attn_pool")


def heads_for(dim: int, architecture: str | None, given: int | None, source: str) -> int:
    if given:
        return given
    if architecture:
        match = re.search(r"_(tiny|small|base|large|huge)_", architecture)
        if match:
            return TIMM_SIZE_HEADS[match.group(1)]
    if dim in PAPER_HEADS:
        return PAPER_HEADS[dim]
    raise ValueError(f"{source} weights do not record the number of attention heads (width {dim} "
                     "is not one of the paper's sizes); pass heads=N")


def grid_for(num_patches: int, image_size: Any, patch: tuple[int, int]) -> Any:
    """Image size from the position table: square unless the caller says otherwise."""
    if image_size is not None:
        return image_size
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} position embeddings are not a square grid; pass source_image_size=(h, w)")
    return (side * patch[0], side * patch[1]) if patch[0] != patch[1] else side * patch[0]


def config_from_state_dict(state: dict[str, torch.Tensor], hints: dict[str, Any]) -> ViTConfig:
    found = [k for k in state if any(u in k for u in UNSUPPORTED)]
    if found:
        raise ValueError(f"timm weights with {found[0]!r}: that ViT variant (registers, layer "
                         "scale, pre-norm, qk-norm or attention pooling) is not supported by vitkit")
    dim, channels, ph, pw = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    class_token = "cls_token" in state
    prefix = 1 if class_token else 0
    fc_norm = "fc_norm.weight" in state
    pool = hints.get("pool") or ("mean" if fc_norm or not class_token else "cls")
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    return ViTConfig(
        image_size=grid_for(state["pos_embed"].shape[1] - prefix, hints.get("image_size"), (ph, pw)),
        patch_size=ph if ph == pw else (ph, pw), in_channels=channels, num_classes=num_classes, dim=dim,
        depth=depth, heads=heads_for(dim, hints.get("architecture"), hints.get("heads"), "timm"),
        mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0], class_token=class_token, pool=pool,
        fc_norm=fc_norm, qkv_bias="blocks.0.attn.qkv.bias" in state,
        norm_eps=hints.get("norm_eps", 1e-6))


def to_vitkit(state: dict[str, torch.Tensor], hints: dict[str, Any]) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    state = {k.removeprefix("module."): v for k, v in state.items()}
    config = config_from_state_dict(state, hints)
    return config, state


def from_vitkit(model: ViT) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A state dict that timm's VisionTransformer loads unchanged, and the kwargs to build it."""
    c = model.config
    if c.patch_embed != "conv" or c.pos_embed != "learned" or c.representation_size or c.pool == "mean-all" \
            or c.head_dim not in (None, c.dim // c.heads) or c.act != "gelu" or c.norm_eps != 1e-6:
        raise ValueError("timm's VisionTransformer cannot express this model (it needs a conv patch "
                         "embedding, a learned position table, exact GELU, LayerNorm eps 1e-6, no "
                         "pre-logits, cls or mean pooling)")
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    kwargs = dict(img_size=c.image_size, patch_size=c.patch_size, in_chans=c.in_channels,
                  num_classes=c.num_classes, embed_dim=c.dim, depth=c.depth, num_heads=c.heads,
                  mlp_ratio=c.mlp_dim / c.dim, qkv_bias=c.qkv_bias, class_token=c.class_token,
                  global_pool="token" if c.pool == "cls" else "avg", fc_norm=c.fc_norm)
    return state, kwargs

"""torchvision's `VisionTransformer` (vit_b_16, ...) state dicts -> vitkit.

torchvision uses `nn.MultiheadAttention`, whose fused `in_proj_weight` is q, k, v stacked like
vitkit's qkv; its MLP is `mlp.0` / `mlp.3` (`mlp.linear_1` / `linear_2` in old releases).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from vitkit.model.config import ViTConfig
from vitkit.model.normalization import IMAGENET
from vitkit.weights.common import source_image_size
from vitkit.weights.timm import heads_for

LAYER = "encoder.layers.encoder_layer_{i}."
NORMALIZATION = IMAGENET, "torchvision's ViT weights all take ImageNet's statistics"


def is_torchvision(state: dict[str, torch.Tensor]) -> bool:
    return "conv_proj.weight" in state and "encoder.pos_embedding" in state


def to_vitkit(state: dict[str, torch.Tensor], hints: dict[str, Any]) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    dim, channels, ph, pw = state["conv_proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.encoder_layer_(\d+)\.", k)))
    mlp = "mlp.0" if LAYER.format(i=0) + "mlp.0.weight" in state else "mlp.linear_1"
    mlp2 = "mlp.3" if mlp == "mlp.0" else "mlp.linear_2"
    pre_logits = "heads.pre_logits.weight" in state
    image_size, _ = source_image_size(state["encoder.pos_embedding"].shape[1], 1, (ph, pw), prefix_rows=True,
                                      recorded=hints.get("image_size"), target=hints.get("target_image_size"))
    config = ViTConfig(
        image_size=image_size,
        patch_size=ph if ph == pw else (ph, pw), in_channels=channels,
        num_classes=state["heads.head.weight"].shape[0] if "heads.head.weight" in state else 0, dim=dim,
        depth=depth, heads=heads_for(dim, None, hints.get("heads"), "torchvision"),
        mlp_dim=state[LAYER.format(i=0) + mlp + ".weight"].shape[0],
        representation_size=state["heads.pre_logits.weight"].shape[0] if pre_logits else None,
        norm_eps=hints.get("norm_eps", 1e-6))
    out = {"cls_token": state["class_token"], "pos_embed": state["encoder.pos_embedding"],
           "patch_embed.proj.weight": state["conv_proj.weight"], "patch_embed.proj.bias": state["conv_proj.bias"],
           "norm.weight": state["encoder.ln.weight"], "norm.bias": state["encoder.ln.bias"]}
    pairs = [("ln_1", "norm1"), ("self_attention.out_proj", "attn.proj"), ("ln_2", "norm2"),
             (mlp, "mlp.fc1"), (mlp2, "mlp.fc2")]
    for i in range(depth):
        src, dst = LAYER.format(i=i), f"blocks.{i}."
        out[dst + "attn.qkv.weight"] = state[src + "self_attention.in_proj_weight"]
        out[dst + "attn.qkv.bias"] = state[src + "self_attention.in_proj_bias"]
        for theirs, ours in pairs:
            out[f"{dst}{ours}.weight"] = state[f"{src}{theirs}.weight"]
            out[f"{dst}{ours}.bias"] = state[f"{src}{theirs}.bias"]
    if pre_logits:
        out["pre_logits.0.weight"] = state["heads.pre_logits.weight"]
        out["pre_logits.0.bias"] = state["heads.pre_logits.bias"]
    if config.num_classes:
        out["head.weight"], out["head.bias"] = state["heads.head.weight"], state["heads.head.bias"]
    return config, out

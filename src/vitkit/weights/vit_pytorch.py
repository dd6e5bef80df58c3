"""Weights of vit-pytorch's `ViT` (the write-up's code) -> vitkit.

vit-pytorch keeps a LayerNorm inside each Attention and FeedForward (pre-norm), a fused bias-free
`to_qkv`, LayerNorm(eps=1e-5) everywhere, and the write-up's LayerNorm -> Linear -> LayerNorm patch
embedding. Releases differ: the write-up's has a class token even with mean pooling (so the mean
includes it) and a (1, N+1, dim) position table; current ones drop the class token for mean
pooling and store (N, dim); old ones put a LayerNorm in the head instead of after the encoder.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from vitkit.model.build import build_with_state
from vitkit.model.config import ViTConfig, pair
from vitkit.model.normalization import HALF
from vitkit.model.vit import ViT
from vitkit.weights.common import Source, check_consumed

VIT_PYTORCH_EPS = 1e-5
NORMALIZATION = HALF, "vitkit's default (vit-pytorch leaves it to the user)"


def config_from_state_dict(state: dict[str, torch.Tensor], *, image_size: Any, heads: int | None,
                           pool: str | None = None, patch_size: Any = None) -> ViTConfig:
    """What the shapes tell, plus what they cannot: `heads`, the image size and (old files) pooling."""
    if heads is None:
        raise ValueError("vit-pytorch weights do not record the number of attention heads; "
                         "pass heads=N (vit-pytorch's `heads` argument)")
    if image_size is None:
        raise ValueError("vit-pytorch weights do not record the image size; pass image_size=...")
    dim, patch_dim = state["to_patch_embedding.2.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in state
                    if (m := re.match(r"transformer\.layers\.(\d+)\.", k)))
    inner = state["transformer.layers.0.0.to_qkv.weight"].shape[0] // 3
    mlp_dim = state["transformer.layers.0.1.net.1.weight"].shape[0]
    cls = state["cls_token"]
    class_token = cls.numel() > 0
    positions = state["pos_embedding"].reshape(-1, dim).shape[0]
    num_patches = positions - (1 if class_token else 0)
    pool = _pooling(pool, class_token, modern=state["pos_embedding"].ndim == 2)
    ph, pw = pair(patch_size) if patch_size is not None else _patch_of(num_patches, pair(image_size))
    channels = patch_dim // (ph * pw)
    head_key = "mlp_head.1.weight" if "mlp_head.1.weight" in state else "mlp_head.weight"
    fields = dict(
        image_size=image_size, patch_size=(ph, pw) if ph != pw else ph, in_channels=channels,
        num_classes=state[head_key].shape[0] if head_key in state else 0,
        dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, head_dim=inner // heads,
        patch_embed="linear-ln", class_token=class_token, pool=pool,
        fc_norm="mlp_head.0.weight" in state, qkv_bias=False, norm_eps=VIT_PYTORCH_EPS,
    )
    return ViTConfig(**fields)


def _pooling(pool: str | None, class_token: bool, modern: bool) -> str:
    """vit-pytorch's pooling: current releases have a class token only with pool='cls'."""
    if pool is None:
        if not (modern or not class_token):
            raise ValueError("these vit-pytorch weights come from a release where pooling is not "
                             "visible in the shapes; pass pool='cls' or pool='mean'")
        pool = "cls" if class_token else "mean"
    return "mean-all" if pool == "mean" and class_token else pool  # the write-up's code averages the class token too


def _patch_of(num_patches: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The patch size of a grid that has the image's aspect ratio."""
    h, w = image_hw
    gh = math.isqrt(num_patches * h // w)
    gw = num_patches // max(gh, 1)
    if gh * gw != num_patches or h % gh or w % gw:
        raise ValueError(f"{num_patches} patches do not tile a {h}x{w} image evenly; "
                         "check image_size or pass patch_size")
    return h // gh, w // gw


def convert_state_dict(state: dict[str, torch.Tensor], config: ViTConfig) -> dict[str, torch.Tensor]:
    """Rename vit-pytorch keys to vitkit keys; reshape the token tables."""
    out = {
        "patch_embed.norm_in.weight": state["to_patch_embedding.1.weight"],
        "patch_embed.norm_in.bias": state["to_patch_embedding.1.bias"],
        "patch_embed.proj.weight": state["to_patch_embedding.2.weight"],
        "patch_embed.proj.bias": state["to_patch_embedding.2.bias"],
        "patch_embed.norm_out.weight": state["to_patch_embedding.3.weight"],
        "patch_embed.norm_out.bias": state["to_patch_embedding.3.bias"],
        "pos_embed": state["pos_embedding"].reshape(1, -1, config.dim),
    }
    if config.class_token:
        out["cls_token"] = state["cls_token"].reshape(1, 1, config.dim)
    for i in range(config.depth):
        src, dst = f"transformer.layers.{i}.", f"blocks.{i}."
        out[dst + "norm1.weight"] = state[src + "0.norm.weight"]
        out[dst + "norm1.bias"] = state[src + "0.norm.bias"]
        out[dst + "attn.qkv.weight"] = state[src + "0.to_qkv.weight"]
        if src + "0.to_out.0.weight" in state:
            out[dst + "attn.proj.weight"] = state[src + "0.to_out.0.weight"]
            out[dst + "attn.proj.bias"] = state[src + "0.to_out.0.bias"]
        else:  # one head as wide as the model: vit-pytorch skips the output projection
            out[dst + "attn.proj.weight"] = torch.eye(config.dim)
            out[dst + "attn.proj.bias"] = torch.zeros(config.dim)
        for ours, theirs in (("norm2", "0"), ("mlp.fc1", "1"), ("mlp.fc2", "4")):
            out[f"{dst}{ours}.weight"] = state[f"{src}1.net.{theirs}.weight"]
            out[f"{dst}{ours}.bias"] = state[f"{src}1.net.{theirs}.bias"]
    if "mlp_head.0.weight" in state:  # old releases: LayerNorm in the head, after pooling
        if "transformer.norm.weight" in state:
            raise ValueError("these vit-pytorch weights normalise twice (encoder and head); "
                             "vitkit cannot express that architecture")
        out["fc_norm.weight"], out["fc_norm.bias"] = state["mlp_head.0.weight"], state["mlp_head.0.bias"]
        out["head.weight"], out["head.bias"] = state["mlp_head.1.weight"], state["mlp_head.1.bias"]
    else:
        out["norm.weight"] = state["transformer.norm.weight"]
        out["norm.bias"] = state["transformer.norm.bias"]
        if "mlp_head.weight" in state:
            out["head.weight"], out["head.bias"] = state["mlp_head.weight"], state["mlp_head.bias"]
    return out


def from_vit_pytorch(state: dict[str, torch.Tensor], *, image_size: Any, heads: int | None,
                     pool: str | None = None, patch_size: Any = None, **overrides: Any) -> ViT:
    """A vitkit `ViT` computing the same function as the vit-pytorch `ViT` whose state_dict this is.

    >>> model = from_vit_pytorch(vp_model.state_dict(), image_size=256, heads=16)
    """
    state = Source((k.removeprefix("module."), v) for k, v in state.items())
    try:
        config = config_from_state_dict(state, image_size=image_size, heads=heads, pool=pool,
                                        patch_size=patch_size)
        converted = convert_state_dict(state, config)
    except KeyError as e:
        raise ValueError(f"not a vit-pytorch ViT state_dict: key {e} is missing") from None
    check_consumed(state, "vit-pytorch weights")
    return build_with_state(config, converted, **overrides)

"""timm's NaFlex ViTs (`NaFlexVit`, the `naflexvit_*` models) -> vitkit.

Their blocks, norms, MAP head and classifier have timm's (so vitkit's) names. The embedding
differs: a linear projection of patches flattened as (ph, pw, C), which is vitkit's convolution
kernel laid out differently, and a (1, rows, cols, dim) position table for the patches only
(no_embed_class), which vitkit keeps as (1, rows * cols, dim). What vitkit cannot compute the same
way is refused with the reason: factorized or aspect-preserving position tables, grid-sample
position lookup, RoPE, EVA blocks, norms in the embedding, pooling that includes the prefix.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from vitkit.model.config import ViTConfig
from vitkit.weights.timm import ACTS, POOLS, heads_for

# NaFlexVitCfg fields whose non-default values vitkit does not compute the same way
UNSUPPORTED = {"pos_embed": "learned", "pos_embed_ar_preserving": False, "pos_embed_use_grid_sample": False,
               "pos_embed_interp_mode": "bicubic", "pos_embed_align_corners": False, "pos_embed_antialias": True,
               "rope_type": "", "attn_type": "standard", "swiglu_mlp": False, "pool_include_prefix": False,
               "scale_mlp_norm": False, "scale_attn_inner_norm": False, "patchify_channels_last": True,
               "final_norm": True, "num_kv_heads": None, "attn_gated": False, "input_norm_layer": None,
               "embed_norm_layer": None, "dynamic_img_pad": False}


def is_naflex(state: dict[str, torch.Tensor]) -> bool:
    return "embeds.proj.weight" in state


def naflex_args(config_json: dict[str, Any] | None) -> dict[str, Any]:
    """The NaFlexVitCfg a timm config.json describes: the named model's definition (read from
    timm where it is installed, on the meta device) overlaid with config.json's model_args."""
    args = dict((config_json or {}).get("model_args") or {})
    name = (config_json or {}).get("architecture")
    try:
        import timm
    except ImportError:
        return args
    if not name or not timm.is_model(name):
        return args
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **args)
    except Exception:  # not a model these arguments build: config.json alone decides
        return args
    cfg = getattr(model, "cfg", None) or _cfg_of(model)
    return {**cfg, **args}


def _cfg_of(model: Any) -> dict[str, Any]:
    """What a built NaFlexVit tells of its configuration (its modules)."""
    embeds = model.embeds
    return {"patch_size": embeds.patch_size, "global_pool": model.global_pool, "class_token": embeds.has_class_token,
            "pos_embed": embeds.pos_embed_type, "pos_embed_ar_preserving": embeds.pos_embed_ar_preserving,
            "pos_embed_use_grid_sample": embeds.pos_embed_use_grid_sample,
            "pos_embed_interp_mode": embeds.pos_embed_interp_mode,
            "pos_embed_align_corners": embeds.pos_embed_align_corners,
            "pos_embed_antialias": embeds.pos_embed_antialias, "pool_include_prefix": model.pool_include_prefix,
            "num_heads": model.blocks[0].attn.num_heads, "norm_eps": model.blocks[0].norm1.eps,
            "act_layer": {"GELU": "gelu", "GELUTanh": "gelu_tanh"}.get(type(model.blocks[0].mlp.act).__name__,
                                                                     type(model.blocks[0].mlp.act).__name__)}


def check_supported(args: dict[str, Any]) -> None:
    for key, default in UNSUPPORTED.items():
        if args.get(key, default) not in (default, "" if default is None else default):
            raise ValueError(f"timm NaFlexVit {key}={args[key]!r} is not something vitkit computes the same way "
                             f"(it has {key}={default!r}); these weights are not converted")
    if (args.get("act_layer") or "gelu") not in ACTS:
        raise ValueError(f"timm NaFlexVit act_layer={args['act_layer']!r} is not supported; vitkit has {list(ACTS)}")


def _patch(state: dict[str, torch.Tensor], args: dict[str, Any], channels: int) -> tuple[int, int]:
    patch = args.get("patch_size")
    if patch is not None:
        return (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    kernel = state["embeds.proj.weight"]
    if kernel.ndim == 4:
        return int(kernel.shape[2]), int(kernel.shape[3])
    side = math.isqrt(kernel.shape[1] // channels)
    if side * side * channels != kernel.shape[1]:
        raise ValueError("cannot tell the patch size of these NaFlex weights; pass a config.json with patch_size")
    return side, side


def config_from_state_dict(state: dict[str, torch.Tensor], args: dict[str, Any], hints: dict[str, Any]) -> ViTConfig:
    check_supported(args)
    kernel = state["embeds.proj.weight"]
    dim, channels = kernel.shape[0], kernel.shape[1] if kernel.ndim == 4 else args.get("in_chans", 3)
    ph, pw = _patch(state, args, channels)
    rows, cols = state["embeds.pos_embed"].shape[1:3]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    class_token = "embeds.cls_token" in state
    pool = args.get("global_pool") or ("map" if "attn_pool.latent" in state else "mean")
    if pool not in POOLS:
        raise ValueError(f"timm global_pool={pool!r} is not something vitkit can express; it pools with "
                         f"{', '.join(repr(p) for p in POOLS)}")
    size = (rows * ph, cols * pw)
    return ViTConfig(
        image_size=size[0] if size[0] == size[1] else size, patch_size=ph if ph == pw else (ph, pw),
        in_channels=channels, num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0, dim=dim,
        depth=depth, heads=hints.get("heads") or args.get("num_heads") or heads_for(dim, hints.get("architecture"),
                                                                                    None, "timm NaFlex"),
        mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0], class_token=class_token, pool=POOLS[pool],
        reg_tokens=state["embeds.reg_token"].shape[1] if "embeds.reg_token" in state else 0, no_embed_class=True,
        fc_norm="fc_norm.weight" in state, qkv_bias="blocks.0.attn.qkv.bias" in state,
        act=ACTS[args.get("act_layer") or "gelu"],
        norm_eps=args.get("norm_eps", 1e-6), init_values=(args.get("init_values") or 1e-5)
        if "blocks.0.ls1.gamma" in state else None, qk_norm="blocks.0.attn.q_norm.weight" in state,
        pre_norm="norm_pre.weight" in state, dynamic_size=True)


def to_vitkit(state: dict[str, torch.Tensor], config_json: dict[str, Any] | None,
              hints: dict[str, Any]) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """The embedding in vitkit's layout; every other weight under its own name."""
    args = naflex_args(config_json)
    config = config_from_state_dict(state, args, hints)
    (ph, pw), dim = config.patch_hw, config.dim
    embed = {"embeds.proj.weight": "patch_embed.proj.weight", "embeds.proj.bias": "patch_embed.proj.bias",
             "embeds.cls_token": "cls_token", "embeds.reg_token": "reg_token", "embeds.pos_embed": "pos_embed"}
    converted = {embed.get(k, k): state[k] for k in state}
    kernel = converted["patch_embed.proj.weight"]  # linear: (dim, ph * pw * C) in (ph, pw, C) order; or a conv's
    if kernel.ndim == 2:
        converted["patch_embed.proj.weight"] = kernel.reshape(dim, ph, pw, config.in_channels).permute(0, 3, 1, 2)
    pos = converted["pos_embed"]
    converted["pos_embed"] = pos.reshape(1, pos.shape[1] * pos.shape[2], dim)
    return config, converted

"""timm's Segment Anything / ViTDet encoders (`VisionTransformerSAM`, the `samvit_*` models) -> vitkit.

The names are timm's, as vitkit's are, except three: the position table is a (1, rows, cols, dim)
map in timm and (1, rows * cols, dim) here, the classifier is `head.fc` in timm, and without a
convolutional neck timm's final norm is `neck` (a LayerNorm over channels), vitkit's `norm`.

What the weights do not record is read from timm's config.json (`model_args`), or from the named
model's definition where timm is installed: the window size and the global blocks. Without
either, the relative position tables tell them: a windowed block's table has 2 * window - 1 rows,
a global block's 2 * grid - 1.
"""

from __future__ import annotations

import collections
import re
from typing import Any

import torch

from vitkit.model.config import ViTConfig
from vitkit.weights.timm import heads_for


def is_sam(state: dict[str, torch.Tensor]) -> bool:
    """A VisionTransformerSAM state dict: a neck, relative position tables, or a 2-D position map."""
    pos = dict.get(state, "pos_embed")  # a plain look-up: Source counts only what is converted
    return any(k.startswith("neck.") or k.endswith("attn.rel_pos_h") for k in state) or \
        (pos is not None and pos.ndim == 4)


def window_hints(config_json: dict[str, Any] | None) -> dict[str, Any]:
    """The window size, global blocks, and whether there is an absolute position table, from
    config.json's model_args, else from the named model's definition in timm (built on the meta
    device: no memory, no download)."""
    args = dict((config_json or {}).get("model_args") or {})
    name = (config_json or {}).get("architecture")
    hints: dict[str, Any] = {}
    defined = _defined(name, args)
    for key, ours in (("window_size", "window_size"), ("global_attn_indexes", "global_blocks")):
        value = args.get(key, defined.get(key))
        if value is not None:
            hints[ours] = tuple(value) if key == "global_attn_indexes" else value
    return hints


def _defined(name: str | None, args: dict[str, Any]) -> dict[str, Any]:
    try:
        import timm
    except ImportError:
        return {}
    if not name or not timm.is_model(name):
        return {}
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **args)
    except Exception:  # not a model these arguments build: config.json alone decides
        return {}
    windows = [getattr(b, "window_size", 0) for b in model.blocks]
    return {"window_size": max(windows), "global_attn_indexes": [i for i, w in enumerate(windows) if not w]}


def _windows(state: dict[str, torch.Tensor], depth: int, hints: dict[str, Any]) -> tuple[int, tuple[int, ...]]:
    """(window_size, global blocks): as told, else from the sizes of the relative position tables."""
    if "window_size" in hints:
        return hints["window_size"], tuple(hints.get("global_blocks", ()))
    if "blocks.0.attn.rel_pos_h" not in state:
        raise ValueError("these SAM weights record neither their window size nor their global blocks (no relative "
                         "position tables, no config.json); pass window_size=N and global_blocks=[...]")
    sizes = [state[f"blocks.{i}.attn.rel_pos_h"].shape[0] for i in range(depth)]
    window = collections.Counter(sizes).most_common(1)[0][0]
    return (window + 1) // 2, tuple(i for i, s in enumerate(sizes) if s != window)


def _image_size(state: dict[str, torch.Tensor], patch: tuple[int, int], globals_: tuple[int, ...],
                hints: dict[str, Any]) -> int | tuple[int, int]:
    if "pos_embed" in state:  # the table's own grid (a named model's config may record its default size)
        rows, cols = state["pos_embed"].shape[1:3]
    elif hints.get("image_size"):
        return hints["image_size"]
    elif globals_ and f"blocks.{globals_[0]}.attn.rel_pos_h" in state:
        rows = (state[f"blocks.{globals_[0]}.attn.rel_pos_h"].shape[0] + 1) // 2
        cols = (state[f"blocks.{globals_[0]}.attn.rel_pos_w"].shape[0] + 1) // 2
    else:
        raise ValueError("these SAM weights do not record their image size; pass source_image_size=N")
    size = (rows * patch[0], cols * patch[1])
    return size[0] if size[0] == size[1] else size


def config_from_state_dict(state: dict[str, torch.Tensor], hints: dict[str, Any]) -> ViTConfig:
    dim, channels, ph, pw = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    rel_pos = "blocks.0.attn.rel_pos_h" in state
    window, globals_ = _windows(state, depth, hints)
    heads = hints.get("heads") or (dim // state["blocks.0.attn.rel_pos_h"].shape[1] if rel_pos else None)
    if hints.get("pool", "mean") != "mean":
        raise ValueError(f"timm's SAM encoder pools by averaging the map; pool={hints['pool']!r} is not it")
    return ViTConfig(
        image_size=_image_size(state, (ph, pw), globals_, hints), patch_size=ph if ph == pw else (ph, pw),
        in_channels=channels, num_classes=state["head.fc.weight"].shape[0] if "head.fc.weight" in state else 0,
        dim=dim, depth=depth, heads=heads or heads_for(dim, hints.get("architecture"), None, "timm SAM"),
        mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0], class_token=False, pool="mean",
        qkv_bias="blocks.0.attn.qkv.bias" in state, act=hints.get("act", "gelu"),
        norm_eps=hints.get("norm_eps", 1e-5),  # SAM's blocks use nn.LayerNorm's default eps
        init_values=(hints.get("init_values") or 1e-5) if "blocks.0.ls1.gamma" in state else None,
        qk_norm="blocks.0.attn.q_norm.weight" in state, pre_norm="norm_pre.weight" in state,
        pos_embed="learned" if "pos_embed" in state else "none", window_size=window, global_blocks=globals_,
        rel_pos=rel_pos, neck_dim=state["neck.0.weight"].shape[0] if "neck.0.weight" in state else None)


def to_vitkit(state: dict[str, torch.Tensor], hints: dict[str, Any]) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """timm's names, but for the position map, the classifier and a neck that is only a norm."""
    config = config_from_state_dict(state, hints)
    renamed = {"head.fc.weight": "head.weight", "head.fc.bias": "head.bias"}
    if "neck.0.weight" not in state:
        renamed |= {"neck.weight": "norm.weight", "neck.bias": "norm.bias"}
    converted = {renamed.get(k, k): state[k] for k in state}
    if "pos_embed" in converted:
        pos = converted["pos_embed"]
        converted["pos_embed"] = pos.reshape(1, pos.shape[1] * pos.shape[2], pos.shape[3])
    return config, converted

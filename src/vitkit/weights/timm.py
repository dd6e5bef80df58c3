"""timm's `VisionTransformer` state dicts <-> vitkit.

vitkit's parameter names follow timm's, so the conversion is a check of what vitkit can express
plus reading the architecture from the shapes and from timm's config.json (`model_args`,
`global_pool`, `pretrained_cfg.input_size`). timm's weights do not record the number of heads: it
comes from config.json, the model name, an override, or the paper's sizes. Nor do they record the
activation (`act_layer`) or the pooling (`global_pool`): without a config.json they are timm's
defaults (exact GELU; the class token, or the mean with fc_norm or without a class token).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from vitkit.model.config import ViTConfig
from vitkit.model.normalization import HALF, IMAGENET, Normalization
from vitkit.model.vit import ViT
from vitkit.weights.common import normalization_from, source_image_size

# Table 1 of the paper (and DeiT): width -> heads. Used only when nothing else says.
PAPER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
TIMM_SIZE_HEADS = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16, "so400m": 16}
POOLS = {"token": "cls", "avg": "mean", "map": "map"}  # timm's global_pool -> vitkit's pool
ACTS = {"gelu": "gelu", "gelu_tanh": "gelu-tanh"}  # timm's act_layer -> vitkit's act
LAYER_SCALE = 1e-5  # init_values when only the weights say there is layer scale (DINOv2's value)


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


def hints_from_config(config_json: dict[str, Any] | None) -> dict[str, Any]:
    """What timm's config.json records and the weights do not: heads, input size, pooling,
    activation, layer scale and whether the position table has prefix rows."""
    if not config_json:
        return {}
    args = config_json.get("model_args") or {}
    args = {**entrypoint_args(config_json.get("architecture"), args), **args}
    hints: dict[str, Any] = {}
    if "architecture" in config_json:
        hints["architecture"] = config_json["architecture"]
    size = (config_json.get("pretrained_cfg") or {}).get("input_size") or args.get("img_size")
    if size:
        size = size[-2:] if isinstance(size, list) else (size, size)
        hints["image_size"] = tuple(size) if size[0] != size[1] else size[0]
    if "num_heads" in args:
        hints["heads"] = args["num_heads"]
    pool = args.get("global_pool", config_json.get("global_pool"))
    if pool is not None:
        if pool not in POOLS:
            raise ValueError(f"timm global_pool={pool!r} is not something vitkit can express; it pools with "
                             f"{', '.join(repr(p) for p in POOLS)}")
        hints["pool"] = POOLS[pool]
    act = args.get("act_layer", "gelu")
    if act not in ACTS:
        raise ValueError(f"timm act_layer={act!r} is not supported; vitkit has {list(ACTS)}")
    hints["act"] = ACTS[act]
    for key in ("no_embed_class", "init_values", "norm_eps"):
        if args.get(key) is not None:
            hints[key] = args[key]
    return hints


def entrypoint_args(architecture: str | None, args: dict[str, Any]) -> dict[str, Any]:
    """What a timm model name sets in code and its config.json does not repeat: the activation
    (SigLIP's gelu_tanh), LayerNorm eps (CLIP's 1e-5), no_embed_class. Asked of timm where it is
    installed, by building the named model on the meta device (no memory, no download)."""
    try:
        import timm
    except ImportError:
        return {}
    if not architecture or not timm.is_model(architecture):
        return {}
    try:
        with torch.device("meta"):
            model = timm.create_model(architecture, pretrained=False, **args)
        block, act = model.blocks[0], model.blocks[0].mlp.act
    except Exception:  # not a model these arguments build: config.json alone decides
        return {}
    kind = type(act).__name__
    tanh = kind == "GELUTanh" or getattr(act, "approximate", "none") == "tanh"
    return {"act_layer": "gelu_tanh" if tanh else "gelu" if kind == "GELU" else kind,
            "no_embed_class": bool(getattr(model, "no_embed_class", False)), "norm_eps": block.norm1.eps}


def normalization(config_json: dict[str, Any] | None, config: ViTConfig) -> tuple[Normalization, str | None]:
    """The input normalization of timm weights: config.json's `pretrained_cfg.mean/std` (None: recorded);
    else the named model's pretrained_cfg in timm's registry where timm is installed; else timm's
    default for the class (VisionTransformer: IMAGENET_INCEPTION, i.e. 0.5; DeiT's: ImageNet's).
    The second value says where an unrecorded one came from."""
    pretrained = (config_json or {}).get("pretrained_cfg") or {}
    if pretrained.get("mean") is not None and pretrained.get("std") is not None:
        return normalization_from(pretrained["mean"], pretrained["std"]), None
    name = (config_json or {}).get("architecture")
    found = registry_normalization(name, pretrained.get("tag"))
    if found is not None:
        return found, f"the pretrained_cfg of {name} in timm's registry"
    if config.distilled:
        return IMAGENET, "the default of timm's DeiT (VisionTransformerDistilled)"
    return HALF, "the default of timm's VisionTransformer (IMAGENET_INCEPTION_MEAN/STD)"


def registry_normalization(name: str | None, tag: str | None) -> Normalization | None:
    """mean/std of a model name (with its tag) in timm's registry, or None."""
    try:
        from timm.models import get_pretrained_cfg
    except ImportError:
        return None
    if not name:
        return None
    try:
        cfg = get_pretrained_cfg(f"{name}.{tag}" if tag and "." not in name else name)
    except Exception:  # an unregistered name: nothing to look up
        return None
    return normalization_from(cfg.mean, cfg.std) if cfg is not None and cfg.mean and cfg.std else None


def config_from_state_dict(state: dict[str, torch.Tensor], hints: dict[str, Any]) -> ViTConfig:
    dim, channels, ph, pw = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    class_token, distilled = "cls_token" in state, "dist_token" in state
    reg_tokens = state["reg_token"].shape[1] if "reg_token" in state else 0
    prefix_rows = None if hints.get("no_embed_class") is None else not hints["no_embed_class"]
    image_size, no_embed_class = source_image_size(
        state["pos_embed"].shape[1], int(class_token) + int(distilled) + reg_tokens, (ph, pw),
        recorded=hints.get("image_size"), target=hints.get("target_image_size"), prefix_rows=prefix_rows,
        default_rows=True)  # timm's default: the table has rows for the prefix tokens
    fc_norm = "fc_norm.weight" in state
    guess = "map" if "attn_pool.latent" in state else "mean" if fc_norm or not class_token else "cls"
    layer_scale = "blocks.0.ls1.gamma" in state
    return ViTConfig(
        image_size=image_size, patch_size=ph if ph == pw else (ph, pw), in_channels=channels,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0, dim=dim, depth=depth,
        heads=heads_for(dim, hints.get("architecture"), hints.get("heads"), "timm"),
        mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0], class_token=class_token,
        pool=hints.get("pool") or guess, fc_norm=fc_norm, qkv_bias="blocks.0.attn.qkv.bias" in state,
        act=hints.get("act", "gelu"), norm_eps=hints.get("norm_eps", 1e-6), reg_tokens=reg_tokens,
        distilled=distilled, no_embed_class=no_embed_class,
        init_values=(hints.get("init_values") or LAYER_SCALE) if layer_scale else None,
        qk_norm="blocks.0.attn.q_norm.weight" in state, pre_norm="norm_pre.weight" in state)


def to_vitkit(state: dict[str, torch.Tensor], hints: dict[str, Any]) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """vitkit's names are timm's: every weight is taken as it is (the strict load checks them)."""
    converted = {k: state[k] for k in state}
    return config_from_state_dict(converted, hints), converted


def from_vitkit(model: ViT) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A state dict that timm's VisionTransformer loads unchanged, and the kwargs to build it."""
    c = model.config
    if c.patch_embed != "conv" or c.pos_embed != "learned" or c.representation_size or c.pool == "mean-all" \
            or c.head_dim not in (None, c.dim // c.heads) or c.norm_eps != 1e-6:
        raise ValueError("timm's VisionTransformer cannot express this model (it needs a conv patch "
                         "embedding, a learned position table, LayerNorm eps 1e-6, no pre-logits, and "
                         "cls, mean or map pooling)")
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    kwargs = dict(img_size=c.image_size, patch_size=c.patch_size, in_chans=c.in_channels,
                  num_classes=c.num_classes, embed_dim=c.dim, depth=c.depth, num_heads=c.heads,
                  mlp_ratio=c.mlp_dim / c.dim, qkv_bias=c.qkv_bias, class_token=c.class_token,
                  global_pool={v: k for k, v in POOLS.items()}[c.pool], fc_norm=c.fc_norm,
                  act_layer={v: k for k, v in ACTS.items()}[c.act], reg_tokens=c.reg_tokens,
                  no_embed_class=c.no_embed_class, init_values=c.init_values, qk_norm=c.qk_norm,
                  pre_norm=c.pre_norm)
    return state, kwargs

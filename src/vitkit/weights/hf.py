"""Hugging Face transformers' `ViTModel` / `ViTForImageClassification` <-> vitkit.

HF keeps q, k and v as three Linear layers (vitkit fuses them), uses LayerNorm eps 1e-12 by
default, reads the class token for classification, and `ViTModel`'s pooler is Linear + tanh on
the class token: the paper's pre-logits layer. Its descendants (DeiT, DINOv2, SigLIP, CLIP) are in hf_family.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vitkit.model.config import ViTConfig
from vitkit.model.normalization import HALF, IMAGENET, NONE, Normalization
from vitkit.model.vit import ViT
from vitkit.weights import hf_family
from vitkit.weights.common import normalization_from, source_image_size

ACTS = {"gelu": "gelu", "gelu_new": "gelu-tanh", "gelu_pytorch_tanh": "gelu-tanh"}
LAYER = "encoder.layer.{i}."
PAIRS = [  # (HF name inside a layer, vitkit name inside a block)
    ("layernorm_before", "norm1"), ("attention.output.dense", "attn.proj"),
    ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"),
]


PREPROCESSOR = "preprocessor_config.json"
CLIP = Normalization((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
# Without a preprocessor_config.json: what each family's published checkpoints use (google/vit-*,
# google/siglip-*: 0.5, ViTImageProcessor's default; facebook/deit-*, facebook/dinov2-*: ImageNet's;
# openai/clip-*: CLIP's own statistics).
DEFAULTS = {"vit": HALF, "siglip": HALF, "siglip_vision_model": HALF, "deit": IMAGENET, "dinov2": IMAGENET,
            "dinov2_with_registers": IMAGENET, "clip": CLIP, "clip_vision_model": CLIP}


def normalization(directory: Path, hf_config: dict[str, Any] | None) -> tuple[Normalization, str | None]:
    """The input normalization from the image processor's `preprocessor_config.json` beside the
    weights (None: recorded); else the family's default (the second value says which).
    The processor scales pixels by `rescale_factor` (1/255) before `image_mean/std`; vitkit's
    input is in [0, 1], so other factors and `do_normalize: false` are folded in exactly."""
    path = directory / PREPROCESSOR
    if path.is_file():
        pre = json.loads(path.read_text())
        scale = 255 * pre.get("rescale_factor", 1 / 255) if pre.get("do_rescale", True) else 255.0
        if not pre.get("do_normalize", True):
            return normalization_from(NONE.mean, NONE.std, scale), None
        if pre.get("image_mean") is not None and pre.get("image_std") is not None:
            return normalization_from(pre["image_mean"], pre["image_std"], scale), None
    kind = (hf_config or {}).get("model_type", "vit")
    return DEFAULTS.get(kind, HALF), f"the default of Hugging Face's {kind} (no {PREPROCESSOR} beside the weights)"


def preprocessor_config(model: ViT) -> dict[str, Any]:
    """A `preprocessor_config.json` that ViTImageProcessor reads: the model's size and normalization."""
    c, n = model.config, model.normalization or HALF
    channels = lambda values: list(values) * (c.in_channels if len(values) == 1 else 1)  # noqa: E731
    return {"image_processor_type": "ViTImageProcessor", "do_resize": True,
            "size": {"height": c.image_hw[0], "width": c.image_hw[1]}, "resample": 2, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": channels(n.mean),
            "image_std": channels(n.std)}


def is_hf(state: dict[str, torch.Tensor]) -> bool:
    return any(k.endswith(("embeddings.patch_embeddings.projection.weight", "embeddings.patch_embedding.weight"))
               for k in state)


def to_vitkit(state: dict[str, torch.Tensor], hf_config: dict[str, Any] | None,
              hints: dict[str, Any]) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    if not hf_config:
        raise ValueError("Hugging Face ViT weights need the config.json saved beside them (heads, "
                         "LayerNorm eps and activation are not in the weights)")
    kind = hf_config.get("model_type", "vit")
    if kind in hf_family.FAMILIES:
        return hf_family.FAMILIES[kind](state, hf_config, hints)
    if kind != "vit":
        raise ValueError(f"Hugging Face model_type={kind!r} is not a ViT that vitkit reads; it reads vit and "
                         f"{', '.join(hf_family.FAMILIES)}")
    return _vit(state, hf_config, hints)


def _vit(state: dict[str, torch.Tensor], hf_config: dict[str, Any],
         hints: dict[str, Any]) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """transformers' ViTModel / ViTForImageClassification: the config and the weights renamed."""
    prefix = "vit." if "vit.embeddings.cls_token" in state else ""
    get = lambda name: state[prefix + name]  # noqa: E731
    depth = hf_config["num_hidden_layers"]
    act = hf_config.get("hidden_act", "gelu")
    if act not in ACTS:
        raise ValueError(f"Hugging Face hidden_act={act!r} is not supported; vitkit has {list(ACTS)}")
    pooler = prefix + "pooler.dense.weight" in state and "classifier.weight" not in state
    num_classes = state["classifier.weight"].shape[0] if "classifier.weight" in state else 0
    patch = hf_config["patch_size"]
    image_size, _ = source_image_size(get("embeddings.position_embeddings").shape[1], 1, (patch, patch),
                                      recorded=hints.get("image_size") or hf_config["image_size"], prefix_rows=True)
    config = ViTConfig(
        image_size=image_size, patch_size=patch,
        in_channels=hf_config.get("num_channels", 3), num_classes=num_classes, dim=hf_config["hidden_size"],
        depth=depth, heads=hf_config["num_attention_heads"], mlp_dim=hf_config["intermediate_size"],
        qkv_bias=hf_config.get("qkv_bias", True), act=ACTS[act], norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        representation_size=hf_config["hidden_size"] if pooler else None)
    out = {
        "cls_token": get("embeddings.cls_token"), "pos_embed": get("embeddings.position_embeddings"),
        "patch_embed.proj.weight": get("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": get("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": get("layernorm.weight"), "norm.bias": get("layernorm.bias"),
    }
    for i in range(depth):
        out |= _block(state, prefix + LAYER.format(i=i), f"blocks.{i}.", config.qkv_bias)
    if pooler:
        out["pre_logits.0.weight"] = get("pooler.dense.weight")
        out["pre_logits.0.bias"] = get("pooler.dense.bias")
    if num_classes:
        out["head.weight"], out["head.bias"] = state["classifier.weight"], state["classifier.bias"]
    return config, out


def _block(state: dict[str, torch.Tensor], src: str, dst: str, qkv_bias: bool) -> dict[str, torch.Tensor]:
    """One encoder layer: the separate query, key and value projections fused into one qkv."""
    qkv = [src + f"attention.attention.{n}." for n in ("query", "key", "value")]
    out = {dst + "attn.qkv.weight": torch.cat([state[q + "weight"] for q in qkv])}
    if qkv_bias:
        out[dst + "attn.qkv.bias"] = torch.cat([state[q + "bias"] for q in qkv])
    for theirs, ours in PAIRS:
        out[f"{dst}{ours}.weight"] = state[f"{src}{theirs}.weight"]
        out[f"{dst}{ours}.bias"] = state[f"{src}{theirs}.bias"]
    return out


def from_vitkit(model: ViT, class_names: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and config.json that `ViTForImageClassification.from_pretrained` loads unchanged."""
    c = model.config
    act = {"gelu": "gelu", "gelu-tanh": "gelu_pytorch_tanh"}[c.act]
    if (c.patch_embed != "conv" or not c.class_token or c.pool != "cls" or c.fc_norm or c.pos_embed != "learned"
            or c.representation_size or c.head_dim not in (None, c.dim // c.heads) or c.image_hw[0] != c.image_hw[1]
            or c.patch_hw[0] != c.patch_hw[1] or not c.num_classes):
        raise ValueError("Hugging Face's ViTForImageClassification cannot express this model (it needs "
                         "square images and patches, a conv patch embedding, a class token with cls "
                         "pooling, a learned position table, no pre-logits, and a classification head)")
    s = {k: v.detach() for k, v in model.state_dict().items()}
    out = {
        "vit.embeddings.cls_token": s["cls_token"], "vit.embeddings.position_embeddings": s["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": s["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": s["patch_embed.proj.bias"],
        "vit.layernorm.weight": s["norm.weight"], "vit.layernorm.bias": s["norm.bias"],
        "classifier.weight": s["head.weight"], "classifier.bias": s["head.bias"],
    }
    for i in range(c.depth):
        dst, src = "vit." + LAYER.format(i=i), f"blocks.{i}."
        for name, w in zip(("query", "key", "value"), s[src + "attn.qkv.weight"].chunk(3), strict=True):
            out[dst + f"attention.attention.{name}.weight"] = w
        if c.qkv_bias:
            for name, b in zip(("query", "key", "value"), s[src + "attn.qkv.bias"].chunk(3), strict=True):
                out[dst + f"attention.attention.{name}.bias"] = b
        for theirs, ours in PAIRS:
            out[f"{dst}{theirs}.weight"] = s[f"{src}{ours}.weight"]
            out[f"{dst}{theirs}.bias"] = s[f"{src}{ours}.bias"]
    names = class_names or [str(i) for i in range(c.num_classes)]
    hf_config = {
        "model_type": "vit", "architectures": ["ViTForImageClassification"],
        "image_size": c.image_hw[0], "patch_size": c.patch_hw[0], "num_channels": c.in_channels,
        "hidden_size": c.dim, "num_hidden_layers": c.depth, "num_attention_heads": c.heads,
        "intermediate_size": c.mlp_dim, "hidden_act": act, "layer_norm_eps": c.norm_eps,
        "qkv_bias": c.qkv_bias, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "id2label": {str(i): n for i, n in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)},
    }
    return {k: v.contiguous().clone() for k, v in out.items()}, hf_config

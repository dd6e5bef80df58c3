"""Hugging Face transformers' descendants of ViT -> vitkit: DeiT with its distillation head,
DINOv2 (with registers), and the SigLIP and CLIP image towers.

The architecture comes from config.json (for SigLIP/CLIP models of two towers, its
`vision_config`). DINOv2's position table has a row for the class token but none for the
registers: the row is folded into the class token (adding a constant to a token is the same as
adding its position) and the table keeps the patches only (no_embed_class), as timm does.
"""

from __future__ import annotations

from typing import Any

import torch

from vitkit.model.config import ViTConfig
from vitkit.weights.common import Source, source_image_size

ACTS = {"gelu": "gelu", "gelu_new": "gelu-tanh", "gelu_pytorch_tanh": "gelu-tanh"}
# A block's sub-modules in each naming: (HF name, vitkit name).
VIT_NAMES = {"q": "attention.attention.query", "k": "attention.attention.key", "v": "attention.attention.value",
             "attn.proj": "attention.output.dense", "norm1": "layernorm_before", "norm2": "layernorm_after",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
DINO_NAMES = {**VIT_NAMES, "norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
TOWER_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
               "attn.proj": "self_attn.out_proj", "norm1": "layer_norm1", "norm2": "layer_norm2",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def _prefix(state: dict[str, torch.Tensor], *candidates: str) -> str:
    return next((p for p in candidates if any(k.startswith(p) for k in state)), "")


def _fields(c: dict[str, Any], positions: int, prefix_rows: int, hints: dict[str, Any]) -> dict[str, Any]:
    """The ViTConfig fields every family states the same way in config.json."""
    act = c.get("hidden_act", "gelu")
    if act not in ACTS:
        raise ValueError(f"Hugging Face hidden_act={act!r} is not supported; vitkit has {list(ACTS)}")
    patch = c["patch_size"]
    image, _ = source_image_size(positions, prefix_rows, (patch, patch), prefix_rows=True,
                                 recorded=hints.get("image_size") or c["image_size"])
    dim = c["hidden_size"]
    return dict(image_size=image, patch_size=patch, in_channels=c.get("num_channels", 3), dim=dim,
                depth=c["num_hidden_layers"], heads=c["num_attention_heads"],
                mlp_dim=c.get("intermediate_size") or int(dim * c.get("mlp_ratio", 4)),
                qkv_bias=c.get("qkv_bias", True), act=ACTS[act], norm_eps=c.get("layer_norm_eps", 1e-12))


def _blocks(state: dict[str, torch.Tensor], depth: int, layer: str, names: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(depth):
        src, dst = layer.format(i=i), f"blocks.{i}."
        out[dst + "attn.qkv.weight"] = torch.cat([state[f"{src}{names[n]}.weight"] for n in "qkv"])
        if f"{src}{names['q']}.bias" in state:
            out[dst + "attn.qkv.bias"] = torch.cat([state[f"{src}{names[n]}.bias"] for n in "qkv"])
        for ours in ("attn.proj", "norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            for kind in ("weight", "bias"):
                out[f"{dst}{ours}.{kind}"] = state[f"{src}{names[ours]}.{kind}"]
        if src + "layer_scale1.lambda1" in state:
            out[dst + "ls1.gamma"] = state[src + "layer_scale1.lambda1"]
            out[dst + "ls2.gamma"] = state[src + "layer_scale2.lambda1"]
    return out


def _pair(state: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    return {f"{dst}.weight": state[f"{src}.weight"], f"{dst}.bias": state[f"{src}.bias"]}


def deit(state: dict[str, torch.Tensor], c: dict[str, Any], hints: dict[str, Any]
         ) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """DeiTForImageClassificationWithTeacher: the mean of a class-token and a distillation-token head."""
    if "cls_classifier.weight" not in state:
        raise ValueError("vitkit reads DeiT's distilled classifier (DeiTForImageClassificationWithTeacher); "
                         "DeiT with one head on the class token only is not a vitkit architecture")
    p = _prefix(state, "deit.")
    pos = state[p + "embeddings.position_embeddings"]
    config = ViTConfig(**_fields(c, pos.shape[1], 2, hints), num_classes=state["cls_classifier.weight"].shape[0],
                       distilled=True)
    out = {"cls_token": state[p + "embeddings.cls_token"], "dist_token": state[p + "embeddings.distillation_token"],
           "pos_embed": pos, **_pair(state, p + "embeddings.patch_embeddings.projection", "patch_embed.proj"),
           **_pair(state, p + "layernorm", "norm"), **_pair(state, "cls_classifier", "head"),
           **_pair(state, "distillation_classifier", "head_dist")}
    return config, {**out, **_blocks(state, config.depth, p + "encoder.layer.{i}.", VIT_NAMES)}


def dinov2(state: Source, c: dict[str, Any], hints: dict[str, Any]
           ) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Dinov2Model / Dinov2WithRegistersModel: features = the class token after the final norm."""
    if c.get("use_swiglu_ffn"):
        raise ValueError("DINOv2 with a SwiGLU MLP (ViT-g) is not a vitkit architecture")
    if "classifier.weight" in state:
        raise ValueError("Dinov2ForImageClassification's head reads the class token and the mean patch token "
                         "together, which vitkit cannot express; load the backbone (Dinov2Model)")
    p = _prefix(state, "dinov2_with_registers.", "dinov2.")
    pos = state[p + "embeddings.position_embeddings"]
    regs = state.get(p + "embeddings.register_tokens")
    state.set_aside([p + "embeddings.mask_token"])  # it stands in for masked patches in pre-training only
    config = ViTConfig(**_fields(c, pos.shape[1], 1, hints), num_classes=0, no_embed_class=True,
                       reg_tokens=0 if regs is None else regs.shape[1], init_values=c.get("layerscale_value", 1.0))
    out = {"cls_token": state[p + "embeddings.cls_token"] + pos[:, :1], "pos_embed": pos[:, 1:],
           **_pair(state, p + "embeddings.patch_embeddings.projection", "patch_embed.proj"),
           **_pair(state, p + "layernorm", "norm")}
    if regs is not None:
        out["reg_token"] = regs
    return config, {**out, **_blocks(state, config.depth, p + "encoder.layer.{i}.", DINO_NAMES)}


def image_tower(state: Source, c: dict[str, Any], hints: dict[str, Any], kind: str
                ) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """SigLIP's and CLIP's image towers: features = their pooler output (SigLIP: the MAP head;
    CLIP: the final norm on the class token). Of a model of two towers, the text tower and the
    logit scale are set aside, read on purpose."""
    c = c.get("vision_config") or c
    p = _prefix(state, "vision_model.")
    state.set_aside([k for k in state if p and not k.startswith(p)])  # the text tower
    e = p + "embeddings."
    pos = state[e + "position_embedding.weight"][None]
    clip = kind == "clip"
    fields = _fields(c, pos.shape[1], int(clip), hints)
    config = ViTConfig(**fields, num_classes=0, class_token=clip, pool="cls" if clip else "map", fc_norm=clip,
                       pre_norm=clip)
    out = {"pos_embed": pos, "patch_embed.proj.weight": state[e + "patch_embedding.weight"],
           **_pair(state, p + "post_layernorm", "fc_norm" if clip else "norm")}
    if clip:  # CLIP: a class token, no patch bias, a LayerNorm before the blocks
        out.update({"cls_token": state[e + "class_embedding"].reshape(1, 1, -1),
                    **_pair(state, p + "pre_layrnorm", "norm_pre")})
    else:
        out["patch_embed.proj.bias"] = state[e + "patch_embedding.bias"]
        out.update(_map_head(state, p + "head.", config.dim))
    return config, {**out, **_blocks(state, config.depth, p + "encoder.layers.{i}.", TOWER_NAMES)}


def _map_head(state: dict[str, torch.Tensor], h: str, dim: int) -> dict[str, torch.Tensor]:
    """SigLIP's attention-pooling head, an nn.MultiheadAttention with q, k, v stacked."""
    w, b = state[h + "attention.in_proj_weight"], state[h + "attention.in_proj_bias"]
    return {"attn_pool.latent": state[h + "probe"], "attn_pool.q.weight": w[:dim], "attn_pool.q.bias": b[:dim],
            "attn_pool.kv.weight": w[dim:], "attn_pool.kv.bias": b[dim:],
            **_pair(state, h + "attention.out_proj", "attn_pool.proj"),
            **_pair(state, h + "layernorm", "attn_pool.norm"),
            **_pair(state, h + "mlp.fc1", "attn_pool.mlp.fc1"), **_pair(state, h + "mlp.fc2", "attn_pool.mlp.fc2")}


FAMILIES = {"deit": deit, "dinov2": dinov2, "dinov2_with_registers": dinov2,
            "siglip": lambda s, c, h: image_tower(s, c, h, "siglip"),
            "siglip_vision_model": lambda s, c, h: image_tower(s, c, h, "siglip"),
            "clip": lambda s, c, h: image_tower(s, c, h, "clip"),
            "clip_vision_model": lambda s, c, h: image_tower(s, c, h, "clip")}

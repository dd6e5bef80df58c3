"""The original JAX/Flax `.npz` checkpoints (google-research/vision_transformer, and big_vision's
where the names agree) -> vitkit.

Flax stores Dense kernels as [in, out] (torch: [out, in]), attention kernels per head as
[dim, heads, head_dim] and [heads, head_dim, dim], the patch convolution as HWIO, and LayerNorm
weights as `scale`. Here the number of heads *is* in the shapes. Both repositories use
`flax.linen.gelu`, whose default is the tanh approximation: so does the converted model.

big_vision adds the position table before prepending the class token, so its table (top-level
`pos_embedding`) has no class-token row; its pooling is "tok" (class token), "gap" (mean) or
"map" (`MAPHead_0`, attention pooling).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from vitkit.model.config import ViTConfig
from vitkit.model.normalization import HALF
from vitkit.weights.common import source_image_size

BLOCK = re.compile(r"Transformer/encoderblock_(\d+)/")
# Where the position table lives: the original repository, big_vision before 2022, big_vision now.
POS_KEYS = ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding", "pos_embedding")
MAP = "MAPHead_0/"
NORMALIZATION = HALF, "the original JAX ViT and big_vision scale pixels to [-1, 1]"


def is_jax(state: dict[str, torch.Tensor]) -> bool:
    return any(k.removeprefix("params/") == "embedding/kernel" for k in state)


def _block_names(state: dict[str, torch.Tensor], i: int) -> tuple[str, str, str, str]:
    """The sub-module names inside block i: the original repo numbers them LayerNorm_0,
    MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3; big_vision LayerNorm_0/1, ..._0."""
    prefix = f"Transformer/encoderblock_{i}/"
    subs = sorted({k[len(prefix):].split("/")[0] for k in state if k.startswith(prefix)})
    norms = sorted(s for s in subs if s.startswith("LayerNorm_"))
    attn = next(s for s in subs if s.startswith("MultiHeadDotProductAttention"))
    mlp = next(s for s in subs if s.startswith("MlpBlock"))
    return prefix + norms[0], prefix + attn, prefix + norms[1], prefix + mlp


def config_from_state(state: dict[str, torch.Tensor], hints: dict[str, Any]) -> ViTConfig:
    if "Transformer/encoderblock/LayerNorm_0/scale" in state:
        raise ValueError("this checkpoint stacks all blocks in one array (scan); vitkit reads "
                         "per-block checkpoints (encoderblock_0, encoderblock_1, ...)")
    ph, pw, channels, dim = state["embedding/kernel"].shape
    depth = 1 + max(int(m.group(1)) for k in state if (m := BLOCK.match(k)))
    pos_key = next((k for k in POS_KEYS if k in state), None)
    class_token = "cls" in state
    _, attn, _, mlp = _block_names(state, 0)
    _, heads, head_dim = state[attn + "/query/kernel"].shape
    recorded, target = hints.get("image_size"), hints.get("target_image_size")
    if pos_key:  # big_vision's current table may or may not have the class row: the count says
        image, no_embed_class = source_image_size(
            state[pos_key].shape[1], int(class_token), (ph, pw), recorded=recorded, target=target,
            prefix_rows=None if pos_key == "pos_embedding" else True)
    elif recorded or target:
        image, no_embed_class = recorded or target, False
    else:
        raise ValueError("this checkpoint has no position table (sin-cos); pass image_size=...")
    pool = "map" if MAP + "probe" in state else "cls" if class_token else "mean"
    return ViTConfig(
        image_size=image, patch_size=ph if ph == pw else (ph, pw), in_channels=channels,
        num_classes=state["head/kernel"].shape[1] if "head/kernel" in state else 0, dim=dim, depth=depth,
        heads=heads, head_dim=head_dim if heads * head_dim != dim else None,
        mlp_dim=state[mlp + "/Dense_0/kernel"].shape[1], class_token=class_token,
        pool=hints.get("pool") or pool, pos_embed="learned" if pos_key else "sincos2d",
        no_embed_class=no_embed_class, act="gelu-tanh", norm_eps=1e-6,
        representation_size=state["pre_logits/kernel"].shape[1] if "pre_logits/kernel" in state else None)


def _dense(state: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return state[name + "/kernel"].T, state[name + "/bias"]


def _heads(state: dict[str, torch.Tensor], attn: str, name: str, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-head [dim, heads, head_dim] kernel as one torch Linear weight [heads * head_dim, dim]."""
    return state[f"{attn}/{name}/kernel"].reshape(dim, -1).T, state[f"{attn}/{name}/bias"].reshape(-1)


def _block(state: dict[str, torch.Tensor], i: int, dim: int) -> dict[str, torch.Tensor]:
    norm1, attn, norm2, mlp = _block_names(state, i)
    qkv = [_heads(state, attn, n, dim) for n in ("query", "key", "value")]
    out = {"attn.qkv.weight": torch.cat([w for w, _ in qkv]), "attn.qkv.bias": torch.cat([b for _, b in qkv]),
           "attn.proj.weight": state[f"{attn}/out/kernel"].reshape(-1, dim).T,
           "attn.proj.bias": state[f"{attn}/out/bias"]}
    for ours, theirs in (("norm1", norm1), ("norm2", norm2)):
        out[f"{ours}.weight"], out[f"{ours}.bias"] = state[theirs + "/scale"], state[theirs + "/bias"]
    out["mlp.fc1.weight"], out["mlp.fc1.bias"] = _dense(state, mlp + "/Dense_0")
    out["mlp.fc2.weight"], out["mlp.fc2.bias"] = _dense(state, mlp + "/Dense_1")
    return {f"blocks.{i}.{k}": v for k, v in out.items()}


def _map_head(state: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """big_vision's MAPHead: a probe, attention with separate key and value (fused here), a
    LayerNorm and an MLP."""
    attn = MAP + "MultiHeadDotProductAttention_0"
    (q, q_bias), (k, k_bias), (v, v_bias) = (_heads(state, attn, n, dim) for n in ("query", "key", "value"))
    out = {"latent": state[MAP + "probe"], "q.weight": q, "q.bias": q_bias,
           "kv.weight": torch.cat([k, v]), "kv.bias": torch.cat([k_bias, v_bias]),
           "proj.weight": state[f"{attn}/out/kernel"].reshape(-1, dim).T, "proj.bias": state[f"{attn}/out/bias"],
           "norm.weight": state[MAP + "LayerNorm_0/scale"], "norm.bias": state[MAP + "LayerNorm_0/bias"]}
    out["mlp.fc1.weight"], out["mlp.fc1.bias"] = _dense(state, MAP + "MlpBlock_0/Dense_0")
    out["mlp.fc2.weight"], out["mlp.fc2.bias"] = _dense(state, MAP + "MlpBlock_0/Dense_1")
    return {f"attn_pool.{k}": v for k, v in out.items()}


def to_vitkit(state: dict[str, torch.Tensor], hints: dict[str, Any]) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    config = config_from_state(state, hints)
    dim = config.dim
    out = {"patch_embed.proj.weight": state["embedding/kernel"].permute(3, 2, 0, 1),
           "patch_embed.proj.bias": state["embedding/bias"],
           "norm.weight": state["Transformer/encoder_norm/scale"], "norm.bias": state["Transformer/encoder_norm/bias"]}
    pos_key = next((k for k in POS_KEYS if k in state), None)
    if pos_key:
        out["pos_embed"] = state[pos_key]
    if config.class_token:
        out["cls_token"] = state["cls"]
    for i in range(config.depth):
        out.update(_block(state, i, dim))
    if config.pool == "map":
        out.update(_map_head(state, dim))
    if config.representation_size:
        out["pre_logits.0.weight"], out["pre_logits.0.bias"] = _dense(state, "pre_logits")
    if config.num_classes:
        out["head.weight"], out["head.bias"] = _dense(state, "head")
    return config, {k: v.contiguous() for k, v in out.items()}

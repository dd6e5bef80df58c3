"""The original JAX/Flax `.npz` checkpoints (google-research/vision_transformer, and big_vision's
where the names agree) -> vitkit.

Flax stores Dense kernels as [in, out] (torch: [out, in]), attention kernels per head as
[dim, heads, head_dim] and [heads, head_dim, dim], the patch convolution as HWIO, and LayerNorm
weights as `scale`. Here the number of heads *is* in the shapes.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from vitkit.model.config import ViTConfig
from vitkit.weights.timm import grid_for

BLOCK = re.compile(r"Transformer/encoderblock_(\d+)/")


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


def to_vitkit(state: dict[str, torch.Tensor], hints: dict[str, Any]) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    state = {k.removeprefix("params/"): v for k, v in state.items()}
    if "Transformer/encoderblock/LayerNorm_0/scale" in state:
        raise ValueError("this checkpoint stacks all blocks in one array (scan); vitkit reads "
                         "per-block checkpoints (encoderblock_0, encoderblock_1, ...)")
    ph, pw, channels, dim = state["embedding/kernel"].shape
    depth = 1 + max(int(m.group(1)) for k in state if (m := BLOCK.match(k)))
    pos_key = next((k for k in ("Transformer/posembed_input/pos_embedding", "pos_embedding") if k in state), None)
    class_token = "cls" in state
    norm1, attn, norm2, mlp = _block_names(state, 0)
    _, heads, head_dim = state[attn + "/query/kernel"].shape
    pre_logits = "pre_logits/kernel" in state
    num_patches = state[pos_key].shape[1] - (1 if class_token else 0) if pos_key else None
    image = hints.get("image_size") or (grid_for(num_patches, None, (ph, pw)) if pos_key else None)
    if image is None:
        raise ValueError("this checkpoint has no position table (sin-cos); pass image_size=...")
    config = ViTConfig(
        image_size=image, patch_size=ph if ph == pw else (ph, pw), in_channels=channels,
        num_classes=state["head/kernel"].shape[1] if "head/kernel" in state else 0, dim=dim, depth=depth,
        heads=heads, head_dim=head_dim if heads * head_dim != dim else None,
        mlp_dim=state[mlp + "/Dense_0/kernel"].shape[1], class_token=class_token,
        pool=hints.get("pool") or ("cls" if class_token else "mean"),
        pos_embed="learned" if pos_key else "sincos2d",
        representation_size=state["pre_logits/kernel"].shape[1] if pre_logits else None, norm_eps=1e-6)

    def dense(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return state[name + "/kernel"].T, state[name + "/bias"]

    out = {"patch_embed.proj.weight": state["embedding/kernel"].permute(3, 2, 0, 1),
           "patch_embed.proj.bias": state["embedding/bias"],
           "norm.weight": state["Transformer/encoder_norm/scale"], "norm.bias": state["Transformer/encoder_norm/bias"]}
    if pos_key:
        out["pos_embed"] = state[pos_key]
    if class_token:
        out["cls_token"] = state["cls"]
    for i in range(depth):
        norm1, attn, norm2, mlp = _block_names(state, i)
        dst = f"blocks.{i}."
        q, k, v = (state[f"{attn}/{n}/kernel"].reshape(dim, -1).T for n in ("query", "key", "value"))
        out[dst + "attn.qkv.weight"] = torch.cat([q, k, v])
        biases = [state[f"{attn}/{n}/bias"].reshape(-1) for n in ("query", "key", "value")]
        out[dst + "attn.qkv.bias"] = torch.cat(biases)
        out[dst + "attn.proj.weight"] = state[f"{attn}/out/kernel"].reshape(-1, dim).T
        out[dst + "attn.proj.bias"] = state[f"{attn}/out/bias"]
        for ours, theirs in (("norm1", norm1), ("norm2", norm2)):
            out[f"{dst}{ours}.weight"], out[f"{dst}{ours}.bias"] = state[theirs + "/scale"], state[theirs + "/bias"]
        out[dst + "mlp.fc1.weight"], out[dst + "mlp.fc1.bias"] = dense(mlp + "/Dense_0")
        out[dst + "mlp.fc2.weight"], out[dst + "mlp.fc2.bias"] = dense(mlp + "/Dense_1")
    if pre_logits:
        out["pre_logits.0.weight"], out["pre_logits.0.bias"] = dense("pre_logits")
    if config.num_classes:
        out["head.weight"], out["head.bias"] = dense("head")
    return config, {k: v.contiguous() for k, v in out.items()}

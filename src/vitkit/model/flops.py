"""Analytic compute of a ViT: multiply-accumulates (MACs) per image, counted from the config.

Only matrix products are counted (patch projection, q/k/v, the two attention products, the output
projection, the MLP, pre-logits, head), as profilers such as `FlopCounterMode` do; LayerNorm,
softmax and GELU are linear in the token count and negligible next to them. 1 MAC = 2 FLOPs.
"""

from __future__ import annotations

from vitkit.model.config import ViTConfig


def flops(config: ViTConfig, image_size: int | tuple[int, int] | None = None) -> int:
    """Multiply-accumulates for one image (at `image_size` if given, else the config's)."""
    if image_size is not None:
        config = config.replace(image_size=image_size)
    patches = config.num_patches
    tokens = patches + config.num_prefix_tokens
    ph, pw = config.patch_hw
    dim, inner, mlp = config.dim, config.inner_dim, config.mlp_dim

    embed = patches * config.in_channels * ph * pw * dim
    attention = tokens * dim * 3 * inner + 2 * tokens * tokens * inner + tokens * inner * dim
    mlp_macs = 2 * tokens * dim * mlp
    pre_logits = dim * config.representation_size if config.representation_size else 0
    head = config.feature_dim * config.num_classes * (2 if config.distilled else 1)
    # attention pooling: one query (q, proj) over the patches (k, v, two products), then an MLP
    map_head = 2 * dim * dim + patches * dim * 2 * dim + 2 * patches * dim + 2 * dim * mlp
    pooling = map_head if config.pool == "map" else 0
    return embed + config.depth * (attention + mlp_macs) + pooling + pre_logits + head

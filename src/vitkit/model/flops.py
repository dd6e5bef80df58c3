"""Analytic compute of a ViT: multiply-accumulates (MACs) per image, counted from the config.

Only matrix products and convolutions are counted (a conv stem's or ResNet's convolutions, patch
projection, q/k/v, the two attention products, the output projection, the MLP, pre-logits, head),
as profilers such as `FlopCounterMode` do; norms, pooling, softmax and GELU are linear in the
activations and negligible next to them. 1 MAC = 2 FLOPs.
"""

from __future__ import annotations

from vitkit.model import stems
from vitkit.model.config import ViTConfig


def flops(config: ViTConfig, image_size: int | tuple[int, int] | None = None, every_token: bool = False) -> int:
    """Multiply-accumulates for one image (at `image_size` if given, else the config's), as
    `ViT.forward` computes the logits: a class-token model's last block only for the tokens that
    the head reads (`config.head_tokens`). `every_token`: the last block for every token, as
    `forward_tokens` and the other libraries' models compute it (the usual count: timm's, fvcore's)."""
    if image_size is not None:
        config = config.replace(image_size=image_size)
    patches = config.num_patches
    tokens = patches + config.num_prefix_tokens
    ph, pw = config.patch_hw
    dim, inner, mlp = config.dim, config.inner_dim, config.mlp_dim

    backbone, channels = backbone_macs(config)
    stride = config.stem_stride
    embed = backbone + patches * channels * (ph // stride) * (pw // stride) * dim

    def block(queries: int) -> int:  # q, k, v for every token; the rest for the queries
        attention = tokens * dim * 3 * inner + 2 * queries * tokens * inner + queries * inner * dim
        return attention + 2 * queries * dim * mlp

    last = tokens if every_token or config.head_tokens is None else config.head_tokens
    pre_logits = dim * config.representation_size if config.representation_size else 0
    head = config.feature_dim * config.num_classes * (2 if config.distilled else 1)
    # attention pooling: one query (q, proj) over the patches (k, v, two products), then an MLP
    map_head = 2 * dim * dim + patches * dim * 2 * dim + 2 * patches * dim + 2 * dim * mlp
    pooling = map_head if config.pool == "map" else 0
    return embed + (config.depth - 1) * block(tokens) + block(last) + pooling + pre_logits + head


def backbone_macs(config: ViTConfig) -> tuple[int, int]:
    """MACs of the CNN before the patch projection (model/stems.py), and its output channels."""
    h, w = config.image_hw
    if config.patch_embed == "conv-stem":  # 3x3 convolutions: per width one of stride 2, then stride 1
        macs, channels = 0, config.in_channels
        for width in stems.conv_stem_widths(config):
            h, w = h // 2, w // 2
            macs += h * w * 9 * width * (channels + (config.stem_depth - 1) * width)
            channels = width
        return macs, channels
    if config.patch_embed != "resnet":
        return 0, config.in_channels
    h, w = h // 2, w // 2  # the 7x7 stride-2 stem convolution, then the max-pool halves again
    macs, channels = h * w * 49 * config.in_channels * stems.STEM_WIDTH, stems.STEM_WIDTH
    h, w = h // 2, w // 2
    for i, depth in enumerate(config.backbone_layers):
        out = stems.RESNET_WIDTHS[i]
        mid, stride = out // 4, 2 if i else 1
        macs += h * w * channels * mid  # the first block's 1x1 runs before its strided 3x3
        h, w = h // stride, w // stride
        macs += h * w * channels * out  # its strided 1x1 downsample of the shortcut
        macs += depth * h * w * (9 * mid * mid + mid * out) + (depth - 1) * h * w * out * mid
        channels = out
    return macs, channels

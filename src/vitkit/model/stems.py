"""Convolutions before the patch projection: Xiao et al.'s conv stem and the paper's ResNet hybrid.

Either CNN turns the image into a feature map of stride `config.stem_stride`; `PatchEmbed` then
projects it to tokens with a (patch / stride)-sized convolution, so the token grid is the one of a
patch-P ViT and everything after the embedding is unchanged.

"conv-stem" ("Early Convolutions Help Transformers See Better", Xiao et al. 2021): log2(P) 3x3
stride-2 convolutions, each followed by a norm and ReLU. Xiao et al. normalise with BatchNorm; we
use a LayerNorm over each pixel's channels instead (ConvNeXt's). It does not depend on the batch,
so N processes compute what one process computes (no synchronised statistics), evaluation computes
what training computed (no running averages), and an image's tokens do not depend on the other
images in its batch nor, unlike GroupNorm's statistics over the whole map, on the image size.

"resnet" (the paper's "Hybrid Architecture", Sec. 3.1; timm's `vit_*_r50_*`, `vit_*_r26_*`): a
ResNet with standardised weights, GroupNorm and TensorFlow's 'SAME' padding, as in the JAX code the
weights come from. Parameter names are timm's, so its weights load unchanged (weights/timm_hybrid.py).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.model.config import ViTConfig

STEM_WIDTH = 64  # the ResNet's 7x7 stem
RESNET_WIDTHS = (256, 512, 1024, 2048)  # each stage's output channels; a quarter inside its bottlenecks
STD_CONV_EPS = 1e-8  # the weight standardisation's, as timm builds the hybrids (and BiT)
GROUPS, GROUP_NORM_EPS = 32, 1e-5


def backbone(config: ViTConfig) -> tuple[nn.Module, int]:
    """The CNN before the patch projection (Identity for the paper's plain ViT) and its output channels."""
    if config.patch_embed == "conv-stem":
        widths = conv_stem_widths(config)
        return ConvStem(config.in_channels, widths, config.norm_eps, config.stem_depth), widths[-1]
    if config.patch_embed == "resnet":
        return ResNet(config.in_channels, config.backbone_layers), resnet_width(config.backbone_layers)
    return nn.Identity(), config.in_channels


# -- Xiao et al.'s convolutional stem ------------------------------------------------------------
def conv_stem_widths(config: ViTConfig) -> list[int]:
    """Channels of the stride-2 convolutions: doubling, by default up to the model's width
    (dim/8, dim/4, dim/2, dim for patch 16, as Xiao et al.'s ViT_C-1GF and 4GF)."""
    count = int(math.log2(config.patch_hw[0]))
    first = config.stem_channels or max(config.dim >> (count - 1), 1)
    return [first << i for i in range(count)]


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvStem(nn.Sequential):
    """3x3 convolution -> ChannelNorm -> ReLU (`stem.i.conv`, `stem.i.norm`): per width, one with
    stride 2, then `depth - 1` with stride 1."""

    def __init__(self, in_channels: int, widths: list[int], eps: float, depth: int = 1):
        layers = []
        for width in widths:  # no bias: the norm's follows
            for stride in [2] + [1] * (depth - 1):
                conv = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
                layers.append(nn.Sequential(OrderedDict(conv=conv, norm=ChannelNorm(width, eps=eps), act=nn.ReLU())))
                in_channels = width
        super().__init__(*layers)


# -- the paper's ResNet (timm's ResNetV2 as its hybrids build it) ------------------------------
def resnet_width(layers: tuple[int, ...]) -> int:
    return RESNET_WIDTHS[len(layers) - 1] if layers else STEM_WIDTH


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's 'SAME' padding: the output has ceil(size / stride) rows and columns; an odd
    padding puts the extra row (column) at the bottom (right)."""
    h, w = x.shape[-2:]
    pad_h = max((-(-h // stride) - 1) * stride + kernel - h, 0)
    pad_w = max((-(-w // stride) - 1) * stride + kernel - w, 0)
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=value)


class StdConv2d(nn.Conv2d):
    """A bias-free convolution whose filters are standardised (zero mean, unit variance) on every
    call ("weight standardization", BiT), with 'SAME' padding (timm's StdConv2dSame, eps 1e-8)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = F.layer_norm(w.flatten(1), (w[0].numel(),), eps=STD_CONV_EPS).view_as(w)
        return F.conv2d(pad_same(x, self.kernel_size[0], self.stride[0]), w, None, self.stride)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=GROUP_NORM_EPS)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convolutions, each normalised, added to the input (projected by a
    strided 1x1 `downsample` in a stage's first block), then ReLU: timm's non-pre-activation
    bottleneck, which its hybrids use."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, downsample: bool):
        super().__init__()
        mid = out_channels // 4
        self.downsample = None
        if downsample:
            self.downsample = nn.Sequential(OrderedDict(conv=StdConv2d(in_channels, out_channels, 1, stride),
                                                        norm=group_norm(out_channels)))
        self.conv1, self.norm1 = StdConv2d(in_channels, mid, 1), group_norm(mid)
        self.conv2, self.norm2 = StdConv2d(mid, mid, 3, stride), group_norm(mid)
        self.conv3, self.norm3 = StdConv2d(mid, out_channels, 1), group_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        return F.relu(self.norm3(self.conv3(x)) + shortcut)


class MaxPoolSame(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)


class ResNet(nn.Module):
    """7x7 stride-2 stem and a stride-2 max-pool (stride 4), then stages of bottlenecks, each
    after the first halving the map. `layers`: bottlenecks per stage, () for the stem alone."""

    def __init__(self, in_channels: int, layers: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(conv=StdConv2d(in_channels, STEM_WIDTH, 7, 2),
                                              norm=group_norm(STEM_WIDTH), act=nn.ReLU(), pool=MaxPoolSame()))
        stages, width = [], STEM_WIDTH
        for i, depth in enumerate(layers):
            out = RESNET_WIDTHS[i]
            blocks = [Bottleneck(width if j == 0 else out, out, 2 if i > 0 and j == 0 else 1, downsample=j == 0)
                      for j in range(depth)]
            stages.append(nn.Sequential(OrderedDict(blocks=nn.Sequential(*blocks))))  # timm's stages.i.blocks.j
            width = out
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

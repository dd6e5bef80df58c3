"""timm's ResNet hybrids (`vit_base_r50_s16_224`, `vit_small_r26_s32_224`, `vit_large_r50_s32_224`,
`vit_tiny_r_s16_p8_224`, ...) <-> vitkit's `patch_embed="resnet"`.

vitkit's names are timm's (model/stems.py), with one exception: timm's backbone without stages is
the ResNet's stem itself (`patch_embed.backbone.conv`), vitkit's keeps it under `stem.`. The
transformer is read and written as weights/timm.py reads and writes a plain ViT of the same token
grid. vitkit's `patch_size` is the total stride (the ResNet's times the projection's kernel, e.g.
16 for R50 + a 1x1 projection, 32 for the stem + an 8x8 one), which sets the grid as for any ViT;
timm's `patch_size` is the projection's kernel alone.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import torch

from vitkit.model.config import ViTConfig, resnet_stride
from vitkit.model.vit import ViT
from vitkit.weights import timm

BACKBONE = "patch_embed.backbone."
STEM_ONLY = re.compile(r"^patch_embed\.backbone\.(conv|norm)\.")  # timm's stem without stages
# timm's model for each backbone: the `architecture` that format="timm" writes, which timm builds
ARCHITECTURES = {(3, 4, 9): "vit_base_r50_s16_224", (3, 4, 6, 3): "vit_large_r50_s32_224",
                 (2, 2, 2, 2): "vit_small_r26_s32_224", (): "vit_tiny_r_s16_p8_224"}


def is_hybrid(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(BACKBONE) for k in state)


def to_vitkit(state: dict[str, torch.Tensor], hints: dict[str, Any]) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Every weight under its vitkit name (the strict load checks them) and the config."""
    converted = {STEM_ONLY.sub(BACKBONE + r"stem.\1.", k): state[k] for k in state}
    if BACKBONE + "stem.conv.weight" not in converted:
        first = next(k for k in state if k.startswith(BACKBONE))
        raise ValueError(f"a timm hybrid whose backbone vitkit does not build ({first}); vitkit reads timm's "
                         "ResNetV2 hybrids: vit_*_r50_*, vit_*_r26_*, vit_tiny_r_s16_p8_*")
    stages: dict[int, int] = {}  # stage -> bottlenecks
    for key in converted:
        if m := re.match(r"patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.", key):
            stages[int(m[1])] = max(stages.get(int(m[1]), 0), int(m[2]) + 1)
    layers = tuple(stages[i] for i in sorted(stages))
    # the transformer as timm.py reads a plain ViT with this token grid: a patch of stride x kernel
    stem, proj = converted[BACKBONE + "stem.conv.weight"], converted["patch_embed.proj.weight"]
    kh, kw = proj.shape[2] * resnet_stride(layers), proj.shape[3] * resnet_stride(layers)
    patch = torch.empty(proj.shape[0], stem.shape[1], kh, kw, device="meta")
    plain = {**converted, "patch_embed.proj.weight": patch}
    config = timm.config_from_state_dict(plain, hints)
    return config.replace(patch_embed="resnet", backbone_layers=layers), converted


def from_vitkit(model: ViT) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A state dict that timm's hybrid named by `architecture(config)` loads unchanged, and the kwargs to build it."""
    c = model.config
    architecture(c)  # one timm builds
    plain = SimpleNamespace(config=c.replace(patch_embed="conv", backbone_layers=()), state_dict=model.state_dict)
    state, kwargs = timm.from_vitkit(plain)
    if not c.backbone_layers:
        state = {k.replace(BACKBONE + "stem.", BACKBONE): v for k, v in state.items()}
    kernel = model.patch_embed.proj.kernel_size
    kwargs["patch_size"] = kernel[0] if kernel[0] == kernel[1] else kernel
    return state, kwargs


def architecture(config: ViTConfig) -> str:
    """The timm model whose factory builds this backbone (the kwargs set the rest)."""
    if config.backbone_layers not in ARCHITECTURES:
        raise ValueError(f"timm has no hybrid with backbone_layers={config.backbone_layers}; its hybrids have "
                         f"{', '.join(map(str, ARCHITECTURES))}")
    return ARCHITECTURES[config.backbone_layers]

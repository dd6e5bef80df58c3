"""Named models, all derived from the paper's Table 1 and one `ViTConfig`."""

from __future__ import annotations

from typing import Any

from vitkit.model.config import ViTConfig
from vitkit.model.vit import ViT

# The paper's Table 1 (Ti and S from DeiT): width, depth, heads, MLP width.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "ti": (192, 12, 3, 768),
    "s": (384, 12, 6, 1536),
    "b": (768, 12, 12, 3072),
    "l": (1024, 24, 16, 4096),
    "h": (1280, 32, 16, 5120),
}
PATCHES = (32, 16, 14, 8)
# Small images (MNIST 28 px, CIFAR 32 px): patch 4 keeps a 7x7 or 8x8 grid of tokens.
SMALL_IMAGES = {28: 10, 32: 10}
SMALL_SIZES = ("ti", "s", "b")


def _size(name: str, **fields: Any) -> ViTConfig:
    dim, depth, heads, mlp_dim = SIZES[name]
    return ViTConfig(dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, **fields)


def _build_table() -> dict[str, ViTConfig]:
    table = {f"vit_{s}{p}": _size(s, patch_size=p, image_size=224) for s in SIZES for p in PATCHES}
    for image, classes in SMALL_IMAGES.items():
        for s in SMALL_SIZES:
            table[f"vit_{s}4_{image}"] = _size(s, patch_size=4, image_size=image,
                                               num_classes=classes, in_channels=1 if image == 28 else 3)
    return table


PRESETS: dict[str, ViTConfig] = _build_table()


def get_config(name: str, **overrides: Any) -> ViTConfig:
    """The preset's config with any field replaced, e.g. get_config("vit_b16", num_classes=10)."""
    key = name.lower().replace("-", "_").replace("/", "")
    if key not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(PRESETS)} "
                         "(`vitkit models` lists them with sizes)")
    return PRESETS[key].replace(**overrides) if overrides else PRESETS[key]


def create_model(name: str, **overrides: Any) -> ViT:
    """Build a named model: create_model("vit_b16", num_classes=10, image_size=384)."""
    return ViT(get_config(name, **overrides))


def list_models() -> list[str]:
    return list(PRESETS)

"""Named models, all derived from the paper's Table 1 and one `ViTConfig`. Their published
weights by name are the weights package's (weights/hub.py)."""

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
# The paper's descendants: name pattern -> (Table 1 sizes, the fields that make the family).
FAMILIES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "deit_{}16_distilled": (("ti", "s", "b"), dict(patch_size=16, distilled=True)),
    "vit_{}14_reg4_dinov2": (("s", "b", "l"), dict(patch_size=14, image_size=518, reg_tokens=4, no_embed_class=True,
                                                   init_values=1e-5, num_classes=0)),
    "vit_{}16_reg4_gap": (("b",), dict(patch_size=16, image_size=256, class_token=False, reg_tokens=4,
                                       no_embed_class=True, pool="mean", fc_norm=True)),
    "vit_{}16_siglip": (("b",), dict(patch_size=16, class_token=False, pool="map", num_classes=0)),
    "vit_{}16_clip": (("b",), dict(patch_size=16, pre_norm=True, norm_eps=1e-5, num_classes=0)),
    "vit_{}14_clip": (("l",), dict(patch_size=14, pre_norm=True, norm_eps=1e-5, num_classes=0)),
    # the paper's hybrids (timm's vit_*_r50_*, r26, and the ResNet's stem alone, vit_tiny_r_s16_p8)
    "vit_{}16_r50": (("b",), dict(patch_size=16, patch_embed="resnet", backbone_layers=(3, 4, 9))),
    "vit_{}32_r50": (("l",), dict(patch_size=32, patch_embed="resnet", backbone_layers=(3, 4, 6, 3))),
    "vit_{}32_r26": (("s", "b"), dict(patch_size=32, patch_embed="resnet", backbone_layers=(2, 2, 2, 2))),
    "vit_{}32_rstem": (("ti",), dict(patch_size=32, patch_embed="resnet")),
}
# Xiao et al.'s convolutional stem in place of the patch projection, same token grid (ViT_C).
CONV_STEM = ("vit_ti4_32", "vit_s4_32", "vit_ti16", "vit_s16", "vit_b16")


def _size(name: str, **fields: Any) -> ViTConfig:
    dim, depth, heads, mlp_dim = SIZES[name]
    return ViTConfig(dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, **fields)


def _build_table() -> dict[str, ViTConfig]:
    table = {f"vit_{s}{p}": _size(s, patch_size=p, image_size=224) for s in SIZES for p in PATCHES}
    for image, classes in SMALL_IMAGES.items():
        for s in SMALL_SIZES:
            table[f"vit_{s}4_{image}"] = _size(s, patch_size=4, image_size=image,
                                               num_classes=classes, in_channels=1 if image == 28 else 3)
    for pattern, (sizes, fields) in FAMILIES.items():
        for s in sizes:
            table[pattern.format(s)] = _size(s, **{"image_size": 224, **fields})
    for name in CONV_STEM:
        table[f"{name}_convstem"] = table[name].replace(patch_embed="conv-stem")
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
    """Build a named model at random initialisation: create_model("vit_b16", num_classes=10,
    image_size=384). `vitkit.create_model` also takes `pretrained=` (weights by name, weights/hub.py)."""
    if "pretrained" in overrides or "revision" in overrides:
        raise ValueError("weights by name load through vitkit.create_model(name, pretrained=TAG) (the weights "
                         "package); vitkit.model.create_model builds a model at random initialisation")
    return ViT(get_config(name, **overrides))


def list_models() -> list[str]:
    return list(PRESETS)

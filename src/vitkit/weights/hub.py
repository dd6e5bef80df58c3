"""Weights by name: the Hugging Face Hub repositories of the presets' published weights (timm's
ports, which vitkit reads), and the download itself."""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("vitkit")

# Weights by name: preset -> tag -> Hugging Face Hub repository. Tags are timm's.
PRETRAINED: dict[str, dict[str, str]] = {
    "vit_ti16": {"augreg_in21k_ft_in1k": "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"},
    "vit_s16": {"augreg_in21k_ft_in1k": "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
                "augreg_in21k": "timm/vit_small_patch16_224.augreg_in21k"},
    "vit_b16": {"augreg2_in21k_ft_in1k": "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
                "augreg_in21k_ft_in1k": "timm/vit_base_patch16_224.augreg_in21k_ft_in1k",
                "augreg_in21k": "timm/vit_base_patch16_224.augreg_in21k"},
    "vit_b32": {"augreg_in21k_ft_in1k": "timm/vit_base_patch32_224.augreg_in21k_ft_in1k"},
    "vit_l16": {"augreg_in21k_ft_in1k": "timm/vit_large_patch16_224.augreg_in21k_ft_in1k"},
    "deit_ti16_distilled": {"fb_in1k": "timm/deit_tiny_distilled_patch16_224.fb_in1k"},
    "deit_s16_distilled": {"fb_in1k": "timm/deit_small_distilled_patch16_224.fb_in1k"},
    "deit_b16_distilled": {"fb_in1k": "timm/deit_base_distilled_patch16_224.fb_in1k"},
    "vit_s14_reg4_dinov2": {"lvd142m": "timm/vit_small_patch14_reg4_dinov2.lvd142m"},
    "vit_b14_reg4_dinov2": {"lvd142m": "timm/vit_base_patch14_reg4_dinov2.lvd142m"},
    "vit_l14_reg4_dinov2": {"lvd142m": "timm/vit_large_patch14_reg4_dinov2.lvd142m"},
    "vit_b16_siglip": {"webli": "timm/vit_base_patch16_siglip_224.webli",
                       "v2_webli": "timm/vit_base_patch16_siglip_224.v2_webli"},
    "vit_b16_r50": {"orig_in21k": "timm/vit_base_r50_s16_224.orig_in21k"},
    "vit_s32_r26": {"augreg_in21k_ft_in1k": "timm/vit_small_r26_s32_224.augreg_in21k_ft_in1k",
                    "augreg_in21k": "timm/vit_small_r26_s32_224.augreg_in21k"},
    "vit_l32_r50": {"augreg_in21k_ft_in1k": "timm/vit_large_r50_s32_224.augreg_in21k_ft_in1k"},
    "vit_ti32_rstem": {"augreg_in21k_ft_in1k": "timm/vit_tiny_r_s16_p8_224.augreg_in21k_ft_in1k"},
}
# What must agree between a preset and the weights its table names (the rest may be overridden).
ARCHITECTURE = ("patch_size", "in_channels", "dim", "depth", "heads", "mlp_dim", "class_token", "reg_tokens",
                "distilled", "pool", "pre_norm", "qk_norm", "patch_embed", "backbone_layers")


def pretrained_repo(name: str, tag: str) -> str:
    """The Hub repository of a preset's weights called `tag`."""
    key = name.lower().replace("-", "_").replace("/", "")
    tags = PRETRAINED.get(key, {})
    if tag not in tags:
        known = "; ".join(f"{n}: {', '.join(t)}" for n, t in PRETRAINED.items())
        raise ValueError(f"no pretrained weights {tag!r} for {name}; known tags: {known}")
    return tags[tag]


def resolve(path: str | Path, revision: str | None = None) -> Path:
    """A local path for what `vitkit.load` is given: `NAME:TAG` (a preset's published weights) and
    `hf-hub:ORG/NAME` are downloaded (or found in the Hub's cache) at `revision` (a branch, tag or
    commit; default: main); anything else is a path, for which a revision is an error."""
    name, _, tag = str(path).partition(":")
    if tag and name in PRETRAINED and not Path(path).exists():
        path = "hf-hub:" + pretrained_repo(name, tag)
    if str(path).startswith("hf-hub:"):
        return download(str(path).removeprefix("hf-hub:"), revision)
    if revision is not None:
        raise ValueError(f"--revision {revision} names a version on the Hugging Face Hub; {path} is a local path")
    return Path(path)


def commit_of(folder: Path) -> str | None:
    """The commit a downloaded folder holds: the Hub's cache keeps each as snapshots/<commit>."""
    return folder.name if folder.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", folder.name) else None


def download(repo: str, revision: str | None = None) -> Path:
    """A local folder holding the repository's weights and JSON files at `revision` (the Hub's
    cache keeps one folder per commit, so the folder's name says which commit it is)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError("hf-hub: paths need huggingface_hub (pip install 'vitkit[hub]')") from None
    log.info("fetching %s%s from the Hugging Face hub (or its local cache)", repo, f"@{revision}" if revision else "")
    try:  # the *.json files include preprocessor_config.json: the input normalization
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=["*.json", "model.safetensors"]))
        if (folder / "model.safetensors").is_file():  # not also the same weights as .bin (or open_clip's)
            return folder
        return Path(snapshot_download(repo, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.bin", "*.npz"]))
    except (OSError, ValueError) as e:  # offline and not cached, no network, no such repository, a bad name
        raise ValueError(f"hf-hub:{repo}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

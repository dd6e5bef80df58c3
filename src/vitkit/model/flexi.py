"""One model at any patch size (FlexiViT, Beyer et al. 2023).

A patch embedding trained at one patch size is resized for another by the pseudo-inverse of the
image resize: if B resizes a p x p patch to q x q, the q x q kernel w' that solves B^T w' = w (in
the least-squares sense) gives on the resized patch B x what w gave on x: <B x, w'> = <x, w> for
every x when upsampling (B has full column rank), and the closest such kernel when downsampling.
Plain bicubic resizing of the kernel has no such property: its outputs drift with the scale. The
position table is resampled to the new grid as for any other image size.

`at_patch_size` makes a model for another patch size (for evaluation); `ViT.set_patch_size` runs
the model's own kernel resized on the fly, differentiably, so that training can draw a patch size
per step and keep one stored kernel (`--flexi-patch`).
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.model import position


@functools.lru_cache(maxsize=64)
def _pinv(old: tuple[int, int], new: tuple[int, int], interpolation: str, antialias: bool) -> torch.Tensor:
    """(new_h * new_w, old_h * old_w): pinv(B^T) for the resize B of an old-size patch to the new size
    (the resized basis images are B's columns), in float64."""
    count = old[0] * old[1]
    basis = torch.eye(count, dtype=torch.float64).reshape(count, 1, *old)
    resized = F.interpolate(basis, size=new, mode=interpolation, antialias=antialias, align_corners=False)
    return torch.linalg.pinv(resized.reshape(count, new[0] * new[1]))  # B^T is (old, new): its rows are B x_i


def resize_kernel(kernel: torch.Tensor, size: int | tuple[int, int], interpolation: str = "bicubic",
                  antialias: bool = True) -> torch.Tensor:
    """A (out, in, ph, pw) patch-embedding kernel for (size, size) patches by FlexiViT's
    pseudo-inverse resize (differentiable: a linear map of `kernel`)."""
    new = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    old = tuple(kernel.shape[-2:])
    if min(new) < 1:
        raise ValueError(f"a patch size must be at least 1 pixel, got {new}")
    if old == new:
        return kernel
    pinv = _pinv(old, new, interpolation, antialias).to(kernel.device, torch.float32)
    flat = kernel.reshape(*kernel.shape[:2], -1).float()
    return (flat @ pinv.T).reshape(*kernel.shape[:2], *new).to(kernel.dtype)


def check_patch_size(config, patch: int) -> None:
    """A patch size this model can take: a conv patch embedding and whole patches of its images."""
    if config.patch_embed != "conv":
        raise ValueError(f"only a 'conv' patch embedding can be resized to another patch size (FlexiViT); this "
                         f"model's is {config.patch_embed!r}")
    (h, w) = config.image_hw
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or h % patch or w % patch:
        sizes = [p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0]
        raise ValueError(f"patch size {patch!r} does not divide the {h}x{w} images into whole patches; use one of "
                         f"{sizes}, or another image size")
    if (h // patch) * (w // patch) > 1_000_000:
        raise ValueError(f"patch size {patch} makes {(h // patch) * (w // patch):,} tokens; use a larger patch")


def at_patch_size(model: nn.Module, patch: int) -> nn.Module:
    """A copy of `model` (a vitkit ViT) at `patch` x `patch` patches on images of the same size: its
    patch-embedding kernel resized by the pseudo-inverse, its position table resampled to the new
    grid. The model's own patch size gives a plain copy."""
    config = model.config
    check_patch_size(config, patch)
    new_config = config.replace(patch_size=patch)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["patch_embed.proj.weight"] = resize_kernel(state["patch_embed.proj.weight"], patch)
    if isinstance(model.pos_embed, nn.Parameter):
        state["pos_embed"] = position.resample(state["pos_embed"], new_config.grid, config.pos_prefix_rows,
                                               old_grid=config.grid)
    resized = type(model)(new_config)
    resized.load_state_dict(state)  # a plain dict records no grid: the table, already resampled, is taken as it is
    resized.normalization = copy.copy(model.normalization)
    return resized.train(model.training).to(next(model.parameters()).device)

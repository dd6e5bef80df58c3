"""Position embeddings: the fixed 2-D sin-cos table and resampling a learned one to a new grid."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sincos_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """The 2-D sin-cos embedding of "Better plain ViT baselines": (grid_h * grid_w, dim).

    A quarter of the channels each for sin(x), cos(x), sin(y), cos(y), with geometric frequencies.
    """
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos position embedding needs dim divisible by 4, got {dim}")
    gh, gw = grid
    y, x = torch.meshgrid(torch.arange(gh, dtype=torch.float64),
                          torch.arange(gw, dtype=torch.float64), indexing="ij")
    quarter = dim // 4
    omega = torch.arange(quarter, dtype=torch.float64) / max(quarter - 1, 1)
    omega = 1.0 / temperature**omega
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()


def infer_grid(num_patches: int) -> tuple[int, int]:
    """The grid a flat position table was trained on, when nothing recorded it: only a square can
    be told from the count (a non-square one could be either way round, so it is never guessed)."""
    side = math.isqrt(num_patches)
    if side * side == num_patches:
        return side, side
    raise ValueError(
        f"cannot tell the 2-D grid of a position embedding with {num_patches} patch positions "
        "(not a square); pass the source grid explicitly (old_grid=(rows, cols))")


def resample(pos: torch.Tensor, new_grid: tuple[int, int], num_prefix: int,
             old_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Bicubically resample a (1, prefix + gh*gw, dim) table to `new_grid`, prefix rows kept.

    This is how the paper fine-tunes at a higher resolution than it pre-trained at.
    """
    prefix, patches = pos[:, :num_prefix], pos[:, num_prefix:]
    old_grid = old_grid or infer_grid(patches.shape[1])
    if tuple(old_grid) == tuple(new_grid):
        return pos
    dim = patches.shape[-1]
    grid = patches.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False,
                         antialias=True).to(pos.dtype)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([prefix, patches], dim=1)

"""Small shared test helpers."""

import torch
from torch import nn


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter random values: zero-initialised heads would hide any mismatch."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the largest magnitude in b."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()

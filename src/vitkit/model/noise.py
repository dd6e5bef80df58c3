"""Random draws keyed by the image they are for, not taken from torch's random stream.

Training with N processes must compute what one process computes, and a process's stream is its
own: patch dropout and stochastic depth drawn from it differ with the process count. Drawn from
a key per image instead (the trainer derives it from the seed, the step and the image's place in
the global batch), each image gets the same draws however the batch is split. The draws are a
counter-based hash (no state, the same on every device), computed in int64 without overflow.
"""

from __future__ import annotations

import torch

MASK = 0xFFFFFFFF
ODD = 0x7FEB352D  # an odd multiplier below 2^31: a 32-bit value times it stays below 2^63


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (each multiplication stays below 2^63 in int64)."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & MASK
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & MASK
    return x ^ (x >> 16)


def keys(base: int, positions: torch.Tensor) -> torch.Tensor:
    """One key per image: `base` (from the seed and the step) and each image's place in the global batch."""
    return _mix((positions.long() * ODD + (base & MASK)) & MASK)


def uniform(keys: torch.Tensor, n: int, salt: int) -> torch.Tensor:
    """(len(keys), n) floats in [0, 1): draw j of image i depends on keys[i], j and `salt` only."""
    counters = torch.arange(n, device=keys.device) * 0x2545F49 + (salt & 0xFFFF) * 0x61C88647
    x = _mix(_mix((((keys[:, None] * ODD) & MASK) + counters[None]) & MASK))
    return (x >> 8).float() / float(1 << 24)

"""Seeds from small integers: every random choice of a run is a function of (seed, epoch, position)."""

from __future__ import annotations


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from small integers (splitmix64 steps)."""
    x = 0x9E3779B97F4A7C15
    for part in parts:
        x = (x ^ (part & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF

"""Weights in and out: vitkit's own directories and the formats of other libraries."""

from vitkit.weights.io import load, save
from vitkit.weights.vit_pytorch import from_vit_pytorch

__all__ = ["from_vit_pytorch", "load", "save"]

"""Weights in and out: vitkit's own directories, the formats of other libraries, and weights by
name from the Hugging Face Hub."""

from vitkit.weights.io import create_model, load, save
from vitkit.weights.vit_pytorch import from_vit_pytorch

__all__ = ["create_model", "from_vit_pytorch", "load", "save"]

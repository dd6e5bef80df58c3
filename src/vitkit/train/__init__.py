"""Training: `train` runs (or resumes) a training run; `Recipe` holds every knob of it."""

from vitkit.train.recipe import Recipe
from vitkit.train.trainer import train

__all__ = ["Recipe", "train"]

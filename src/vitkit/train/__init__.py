"""Training: `train` runs (or resumes) a training run; `Recipe` holds every knob of it.

`train` is imported on first use: the command line reads the recipe's knobs for every command,
and only `vitkit train` needs the training code behind them.
"""

from typing import Any

from vitkit.train.recipe import Recipe

__all__ = ["Recipe", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from vitkit.train.trainer import train

        return train
    raise AttributeError(f"module 'vitkit.train' has no attribute {name!r}")

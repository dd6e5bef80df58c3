"""The input normalisation that a model's weights expect, which travels with the weights.

Pixels are scaled to [0, 1], then `(x - mean) / std` per channel. Weights trained with one
normalisation and fed another still run, only worse, and nothing says so: hence every loader
records what its source expects (timm's `pretrained_cfg`, Hugging Face's preprocessor config,
torchvision's ImageNet statistics, big_vision's [-1, 1]), a run records its own in config.json,
and train, eval, predict, explain, serve and export all read it from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (*self.mean, *self.std))
        if len(self.mean) != len(self.std) or not self.mean or not finite or any(s <= 0 for s in self.std):
            raise ValueError(f"a normalization needs as many means as stds (1 or one per channel), all finite, "
                             f"and positive stds; got mean={list(self.mean)}, std={list(self.std)}")

    def __call__(self, images: torch.Tensor, channels: int | None = None) -> torch.Tensor:
        """uint8 or [0, 1] float (B, C, H, W) -> normalised float32. Gray images are repeated to
        `channels` (3 for an RGB model fine-tuned on a 1-channel data set)."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if channels and x.shape[1] == 1 and channels > 1:
            x = x.expand(-1, channels, -1, -1)
        c = x.shape[1]
        if len(self.mean) not in (1, c):
            raise ValueError(f"the normalization has {len(self.mean)} channel values but the images have {c} channels")
        mean = torch.tensor(self.mean, device=x.device).repeat(c // len(self.mean)).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).repeat(c // len(self.std)).view(1, -1, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    def describe(self) -> str:
        name = next((k for k, v in NAMED.items() if v == self), None)
        return name or f"mean {list(self.mean)}, std {list(self.std)}"

    @classmethod
    def parse(cls, spec: Any) -> Normalization:
        """`imagenet`, `half`, `none`, `MEAN,STD` or `M1,M2,M3,S1,S2,S3`, a {"mean", "std"} dict,
        or a Normalization."""
        if isinstance(spec, Normalization):
            return spec
        if isinstance(spec, dict) and {"mean", "std"} <= set(spec):
            try:
                return cls(tuple(map(float, spec["mean"])), tuple(map(float, spec["std"])))
            except TypeError:
                raise ValueError(f"a normalization's mean and std are lists of numbers; got {spec!r}") from None
        if isinstance(spec, str) and spec in NAMED:
            return NAMED[spec]
        if isinstance(spec, str):
            try:
                values = [float(v) for v in spec.split(",")]
            except ValueError:
                values = []
            if values and len(values) % 2 == 0:
                half = len(values) // 2
                return cls(tuple(values[:half]), tuple(values[half:]))
        raise ValueError(f"unknown normalization {spec!r}: use imagenet, half, none, MEAN,STD or "
                         "M1,M2,M3,S1,S2,S3")


class AssumedNormalization(UserWarning):
    """Weights that do not record the normalization they expect: vitkit says what it assumed."""


HALF = Normalization((0.5,), (0.5,))  # [0, 1] -> [-1, 1]: big_vision, the original JAX ViT, timm's augreg, HF
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision, DeiT, timm's ImageNet-1k
NONE = Normalization((0.0,), (1.0,))
NAMED = {"half": HALF, "imagenet": IMAGENET, "none": NONE}


def to_model_input(images: torch.Tensor, normalization: Normalization | str | dict = "half",
                   channels: int | None = None) -> torch.Tensor:
    """uint8 or [0, 1] float (B, C, H, W) -> the normalised float32 input the model was trained on."""
    return Normalization.parse(normalization)(images, channels)

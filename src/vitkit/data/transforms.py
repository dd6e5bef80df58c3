"""Per-image train and eval transforms (torchvision transforms v2), and batch-level MixUp/CutMix."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

MEAN_STD = {"half": ((0.5,), (0.5,)),  # maps [0, 1] to [-1, 1], as big_vision and timm's augreg
            "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def normalize(channels: int, stats: str) -> v2.Normalize:
    mean, std = MEAN_STD[stats]
    return v2.Normalize(list(mean) * (channels // len(mean)), list(std) * (channels // len(std)))


def train_transform(size: tuple[int, int], channels: int, *, crop: str, padding: int, min_scale: float,
                    flip: bool, augment: str, magnitude: int, erasing: float, stats: str = "half"
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (C, H, W) of any size -> float (C, *size), randomly augmented."""
    steps: list = []
    if crop == "random-resized":
        steps.append(v2.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True))
    else:
        steps.append(v2.Resize(size, antialias=True))
        if crop == "pad" and padding:
            steps.append(v2.RandomCrop(size, padding=padding, padding_mode="reflect"))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if augment == "randaugment":
        steps.append(v2.RandAugment(num_ops=2, magnitude=magnitude))
    elif augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    steps += [v2.ToDtype(torch.float32, scale=True), normalize(channels, stats)]
    if erasing:
        steps.append(v2.RandomErasing(p=erasing, value=0))
    return v2.Compose(steps)


def eval_transform(size: tuple[int, int], channels: int, stats: str = "half"
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Square models: resize the shorter side and centre-crop; others: resize to `size`."""
    fit = [v2.Resize(size[0], antialias=True), v2.CenterCrop(size)] if size[0] == size[1] else \
        [v2.Resize(size, antialias=True)]
    return v2.Compose([*fit, v2.ToDtype(torch.float32, scale=True), normalize(channels, stats)])


def mix(num_classes: int, mixup: float, cutmix: float) -> Callable | None:
    """MixUp and/or CutMix on a batch (one of them per batch when both are on)."""
    choices = []
    if mixup > 0:
        choices.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        choices.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

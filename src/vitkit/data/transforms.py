"""Image transforms, in two stages.

Per image, in the loader's workers (torchvision transforms v2): bring each decoded uint8 image to
the model's size (RandomResizedCrop for training on photos, resize + centre crop for evaluation),
and apply RandAugment / TrivialAugment / random erasing if asked. The output stays uint8.

Per batch, on the training device: random crop with padding, flip, rotation, scaling and
translation as one affine warp per image (`GeometricAugment`), then scaling to floats and
normalising (`vitkit.model.normalization`), then MixUp/CutMix. Doing the geometry batched costs one
`grid_sample` per step instead of hundreds of small per-image calls, which on small images was
most of the training time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms import v2


class Fit:
    """Resize so that the image covers `size` with its aspect ratio kept, then centre-crop: the one
    way every command (train, eval, predict, explain) brings an image to the model's size, from a
    folder or an archive alike, so that nothing is squashed. Works on one image or a batch."""

    def __init__(self, size: tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        (h, w), (ih, iw) = self.size, image.shape[-2:]
        if (ih, iw) != (h, w):
            scale = max(h / ih, w / iw)
            covering = [max(h, round(ih * scale)), max(w, round(iw * scale))]
            image = v2.functional.center_crop(v2.functional.resize(image, covering, antialias=True), [h, w])
        return image


def train_transform(size: tuple[int, int], *, crop: str, min_scale: float, augment: str, magnitude: int,
                    erasing: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (C, H, W) of any size -> uint8 (C, *size), with the per-image random operations."""
    steps: list = [v2.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True)
                   if crop == "random-resized" else Fit(size)]
    return v2.Compose(steps + augmentations(augment, magnitude, erasing))


def augmentations(augment: str, magnitude: int, erasing: float) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The per-image random operations after the size step: RandAugment or TrivialAugment, erasing."""
    steps: list = []
    if augment == "randaugment":
        steps.append(v2.RandAugment(num_ops=2, magnitude=magnitude))
    elif augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    if erasing:
        steps.append(v2.RandomErasing(p=erasing, value=0))
    return steps


def eval_transform(size: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (C, H, W) of any size -> uint8 (C, *size), centred (see `Fit`)."""
    return Fit(size)


class GeometricAugment:
    """Per-image random crop-with-padding, horizontal flip, rotation, scale and translation, done
    as one affine warp of the whole batch. Pure crops and flips move whole pixels (exact)."""

    def __init__(self, padding: int = 0, flip: bool = False, rotate: float = 0.0, translate: float = 0.0,
                 scale_jitter: float = 0.0):
        self.padding, self.flip, self.rotate = padding, flip, rotate
        self.translate, self.scale_jitter = translate, scale_jitter

    @property
    def active(self) -> bool:
        return bool(self.padding or self.flip or self.rotate or self.translate or self.scale_jitter)

    def __call__(self, x: torch.Tensor, generator: torch.Generator, start: int = 0,
                 total: int | None = None) -> torch.Tensor:
        """x: float (B, C, H, W) in [0, 1]; the area moved in from outside is black (or mirrored
        for pure crops, like reflect-padding). With several processes, x is images
        start..start+B of a global batch of `total`: the parameters are drawn for the whole
        global batch, so every image is warped as it would be in one process."""
        local, _, h, w = x.shape
        b = total or local

        def uniform(scale: float) -> torch.Tensor:
            return (torch.rand(b, generator=generator) * 2 - 1) * scale

        shift = lambda side: torch.randint(-self.padding, self.padding + 1, (b,), generator=generator) * 2 / side  # noqa: E731
        tx = (shift(w) if self.padding else 0) + uniform(2 * self.translate)
        ty = (shift(h) if self.padding else 0) + uniform(2 * self.translate)
        angle = uniform(math.radians(self.rotate))
        scale = 1 + uniform(self.scale_jitter)
        mirror = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if self.flip else torch.ones(b)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos * mirror, -sin, tx], 1),
                             torch.stack([sin * mirror, cos, ty], 1)], 1)[start:start + local].to(x)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        whole_pixels = not (self.rotate or self.translate or self.scale_jitter)
        return F.grid_sample(x, grid, mode="nearest" if whole_pixels else "bilinear",
                             padding_mode="reflection" if whole_pixels else "zeros", align_corners=False)


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

"""torchvision's convolutional classifiers, trained by the same loop as the ViTs.

A ViT lacks a CNN's inductive bias; on a small data set a CNN trained by `vitkit train --model
torchvision:resnet18` is the teacher that DeiT distillation (`--teacher RUN`) passes that bias
on with, and the baseline a ViT is measured against. It saves, loads, evaluates and predicts
like a ViT run; what needs attention maps (explain, inspect) refuses it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitkit.model.config import LIMITS, Size, bounded, check_fields, pair
from vitkit.model.normalization import HALF

PREFIX = "torchvision:"


@dataclass(frozen=True)
class CNNConfig:
    arch: str  # a torchvision classification model: resnet18, resnet50, convnext_tiny, ...
    num_classes: int = 1000
    in_channels: int = 3
    image_size: Size = 224
    small_images: bool = False  # a ResNet's 3x3 stride-1 stem without max-pool, as for CIFAR

    depth = 1  # for layer-wise lr decay: the body is layer 0, the classifier layer 1

    def __post_init__(self) -> None:
        import torchvision

        if self.arch not in torchvision.models.list_models(torchvision.models):
            raise ValueError(f"torchvision has no classification model {self.arch!r}; choose one of "
                             "torchvision.models.list_models(), e.g. resnet18")
        if isinstance(self.image_size, list):
            object.__setattr__(self, "image_size", tuple(self.image_size))

    @property
    def image_hw(self) -> tuple[int, int]:
        return pair(self.image_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CNNConfig:
        """Build from untrusted JSON-like data (a run's config.json): unknown keys, wrong types and
        sizes out of range are errors, before anything is built."""
        check_fields(cls, data, "CNN")
        if not isinstance(data.get("arch"), str):
            raise ValueError("a CNN config needs 'arch': a torchvision classification model, e.g. resnet18")
        config = cls(**data)
        bounded("num_classes", config.num_classes, 1, LIMITS["num_classes"])
        bounded("in_channels", config.in_channels, 1, LIMITS["in_channels"])
        for side in config.image_hw:
            bounded("image_size", side, 1, LIMITS["image"])
        return config

    def replace(self, **changes: Any) -> CNNConfig:
        return dataclasses.replace(self, **changes)


class CNN(nn.Module):
    def __init__(self, config: CNNConfig):
        super().__init__()
        import torchvision

        self.config = config
        self.net = torchvision.models.get_model(config.arch, num_classes=config.num_classes)
        first = next(m for m in self.net.modules() if isinstance(m, nn.Conv2d))
        if config.small_images and hasattr(self.net, "maxpool"):  # keep 32 px images' resolution
            self.net.conv1 = nn.Conv2d(config.in_channels, first.out_channels, 3, 1, 1, bias=False)
            self.net.maxpool = nn.Identity()
        elif config.in_channels != first.in_channels:
            raise ValueError(f"{config.arch} takes {first.in_channels}-channel images; --model-option "
                             "in_channels is for ResNets with small_images")
        self.normalization = HALF  # as a ViT's: vitkit's own for a new model
        self.blocks = nn.ModuleList()  # no transformer blocks: FSDP shards the whole model as one unit
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """`noise` is a ViT's (per-image keys for its stochastic parts); torchvision's CNNs draw their own."""
        return self.net(x)

    def no_weight_decay(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.ndim <= 1}

    def param_layer(self, name: str) -> int:
        classifier = {n for n, m in self.named_modules() if isinstance(m, nn.Linear)}
        return 1 if name.rsplit(".", 1)[0] in classifier else 0

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise ValueError("--grad-checkpointing recomputes a ViT's blocks; a CNN has none")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


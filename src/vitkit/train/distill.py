"""DeiT's distillation through a token ("Training data-efficient image transformers", Touvron et
al., 2021): a teacher's predictions become a second target, learned by the student's distillation
token and its second head. A convolutional teacher hands a ViT trained on little data some of
the inductive bias it lacks.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.model.normalization import IMAGENET, Normalization

log = logging.getLogger("vitkit")
SOFT_TEMPERATURE, SOFT_WEIGHT = 3.0, 0.1  # DeiT's soft distillation: tau and lambda


class Teacher:
    """A frozen classifier that scores the student's training images, fed the way it was trained:
    its own normalization and image size."""

    def __init__(self, model: nn.Module, normalization: Normalization, image_hw: tuple[int, int] | None):
        self.model = model.eval().requires_grad_(False)
        self.normalization, self.image_hw = normalization, image_hw
        self.commit: str | None = getattr(model, "revision", None)  # the Hub commit of hf-hub: weights

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: float (B, C, H, W) in [0, 1], augmented and mixed as the student sees them."""
        if self.image_hw and tuple(pixels.shape[-2:]) != tuple(self.image_hw):
            pixels = F.interpolate(pixels, size=self.image_hw, mode="bilinear", antialias=True, align_corners=False)
        channels = getattr(getattr(self.model, "config", None), "in_channels", 3)
        return self.model(self.normalization(pixels, channels)).float()


def load_teacher(spec: str, num_classes: int, device: torch.device, revision: str | None = None) -> Teacher:
    """`RUN|WEIGHTS` (anything vitkit.load reads), or `torchvision:ARCH:STATE_DICT` for one of
    torchvision's classifiers (resnet18, convnext_tiny, ...) trained on these classes with
    ImageNet's normalization."""
    if spec.startswith("torchvision:"):
        _, arch, path = [*spec.split(":", 2), "", ""][:3]
        model = _torchvision_classifier(arch, path)
        teacher = Teacher(model, IMAGENET, None)
    else:
        from vitkit.weights import load

        model = load(spec, revision=revision)
        teacher = Teacher(model, model.normalization or Normalization.parse("half"), model.config.image_hw)
    out = _classes_of(teacher.model)
    if out != num_classes:
        raise ValueError(f"the teacher {spec} predicts {out} classes and the data has {num_classes}; "
                         "a teacher must be trained on the same classes")
    teacher.model.to(device)
    log.info("teacher: %s%s (%s parameters)", spec, f" at commit {teacher.commit}" if teacher.commit else "",
             f"{sum(p.numel() for p in teacher.model.parameters()):,}")
    return teacher


def _torchvision_classifier(arch: str, path: str) -> nn.Module:
    """The classifier with as many classes as its state dict's last matrix has rows."""
    import torchvision

    if not arch or not path:
        raise ValueError("--teacher torchvision:ARCH:STATE_DICT, e.g. torchvision:resnet18:teacher.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    classes = [v for v in state.values() if v.ndim == 2][-1].shape[0]
    try:
        model = torchvision.models.get_model(arch, num_classes=classes)
    except ValueError:
        raise ValueError(f"torchvision has no model {arch!r}; see torchvision.models.list_models()") from None
    model.load_state_dict(state)
    return model


def _classes_of(model: nn.Module) -> int:
    if hasattr(model, "config"):
        return model.config.num_classes
    return next(m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)).out_features


def distillation_losses(outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor,
                        teacher: torch.Tensor | None, kind: str, label_smoothing: float) -> torch.Tensor:
    """Per-image losses of a distilled student's (class-head, distillation-head) logits. Hard:
    the distillation head learns the teacher's top class, half and half with the labels (DeiT's
    best). Soft: it matches the teacher's distribution at temperature tau, weighted lambda. With
    no teacher both heads learn the labels."""
    cls, dist = (o.float() for o in outputs)
    base = F.cross_entropy(cls, targets, label_smoothing=label_smoothing, reduction="none")
    if teacher is None:
        return (base + F.cross_entropy(dist, targets, label_smoothing=label_smoothing, reduction="none")) / 2
    if kind == "hard":
        return (base + F.cross_entropy(dist, teacher.argmax(1), reduction="none")) / 2
    t = SOFT_TEMPERATURE
    kl = F.kl_div(F.log_softmax(dist / t, 1), F.log_softmax(teacher / t, 1), reduction="none", log_target=True).sum(1)
    return (1 - SOFT_WEIGHT) * base + SOFT_WEIGHT * t * t * kl

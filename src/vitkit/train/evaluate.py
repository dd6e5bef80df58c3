"""Evaluation: loss, top-1, top-5, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vitkit.data.normalization import Normalization
from vitkit.data.transforms import to_model_input
from vitkit.train.distributed import World, is_sharded


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device,
             bf16: bool = False, normalization: Normalization | str = "half", world: World | None = None) -> dict:
    """Accuracy and loss over every image the loader yields (bad files are counted, not scored).
    With several processes each evaluates its own shard and the counts are added up (exactly)."""
    world = world or World(device=device)
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss_sum, top5_hits, problems, forwards = 0.0, 0, [], 0
    for images, labels, bad in loader:
        problems += bad
        if not len(labels):
            continue
        with autocast(device, bf16):
            logits = model(to_model_input(images.to(device), normalization, model.config.in_channels)).float().cpu()
        forwards += 1
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        k = min(5, num_classes)
        top5_hits += (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum().item()
        confusion += torch.bincount(labels * num_classes + logits.argmax(1),
                                    minlength=num_classes**2).reshape(num_classes, num_classes)
    if is_sharded(model):  # FSDP gathers weights in every forward: all processes run as many
        for _ in range(world.max(forwards) - forwards):
            with autocast(device, bf16):
                model(torch.zeros(1, model.config.in_channels, *model.config.image_hw, device=device))
    confusion = world.sum(confusion)
    loss_sum, top5_hits = world.sum(torch.tensor([loss_sum, top5_hits], dtype=torch.float64)).tolist()
    return summarize(confusion, loss_sum, int(top5_hits), problems)


def summarize(confusion: torch.Tensor, loss_sum: float, top5_hits: int, problems: list) -> dict:
    total = int(confusion.sum())
    per_class_total = confusion.sum(1)
    per_class = (confusion.diag() / per_class_total.clamp_min(1)).tolist()
    return {
        "images": total,
        "top1": confusion.diag().sum().item() / max(total, 1),
        "top5": top5_hits / max(total, 1),
        "loss": loss_sum / max(total, 1),
        "per_class": [a if n else None for a, n in zip(per_class, per_class_total.tolist(), strict=True)],
        "confusion": confusion.tolist(),
        "skipped": [list(p) for p in problems],
    }

"""Evaluation: loss, top-1, top-5, per-class accuracy and the confusion matrix (and its picture).

Used by training (each epoch's validation) and `vitkit eval`; it knows nothing of the trainer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vitkit import atomic
from vitkit.distributed import World, is_sharded
from vitkit.model import naflex
from vitkit.model.normalization import Normalization, to_model_input
from vitkit.runtime import autocast


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
            logits = model(model_input(model, images, normalization, device)).float().cpu()
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


def model_input(model: nn.Module, images: torch.Tensor | list[torch.Tensor], normalization: Normalization | str,
                device: torch.device) -> torch.Tensor | naflex.Patches:
    """A batch of uint8 images as the model takes it: normalised, or for a list of images of their own
    sizes (a token budget), a NaFlex batch of their patches."""
    channels = model.config.in_channels
    if isinstance(images, list):
        return naflex.inputs([x.to(device) for x in images], Normalization.parse(normalization), channels,
                             model.config.patch_hw)
    return to_model_input(images.to(device), normalization, channels)


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


def confusion_png(matrix: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    """The confusion matrix as a picture, with the counts written in for up to 20 classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = min(4 + 0.35 * n, 30)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, label="images")
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        peak = max(max(row) for row in matrix) or 1
        if n <= 20:
            for i, row in enumerate(matrix):
                for j, value in enumerate(row):
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                            color="white" if value > peak / 2 else "black")
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)



"""TensorBoard event files in the run folder, for people who watch a long run as it goes.

Written by rank 0 alone, when the `tensorboard` extra is installed and `--tensorboard` is on (the
default): per step the loss and the learning rate; per epoch the epoch's record (losses,
accuracies, images/s, the share of the time spent waiting for data) and the memory in use. The
file is flushed at every epoch's end and checkpoint, so a killed run keeps what it had logged up
to its last checkpoint, and a resumed run drops what came after it (`purge_step`).
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path

import torch

log = logging.getLogger("vitkit")


class Board:
    """A SummaryWriter, or nothing (off, not rank 0, or tensorboard not installed)."""

    def __init__(self, folder: Path, on: bool, step: int):
        self.writer = None
        if not on:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.debug("no TensorBoard events: pip install 'vitkit[tensorboard]'")
            return
        self.writer = SummaryWriter(str(folder), purge_step=step or None)

    def step(self, step: int, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, step: int, record: dict, device: torch.device) -> None:
        if self.writer is None:
            return
        scalars = {"train/epoch_loss": record["train_loss"], "train/top1": record["train_top1"],
                   "val/loss": record["val_loss"], "val/top1": record["val_top1"], "val/top5": record["val_top5"],
                   "speed/img_per_s": record["img_per_s"],
                   "speed/loader_wait_share": record["loader_wait_s"] / max(record["train_seconds"], 1e-9),
                   "memory/gib": memory(device) / 2**30}
        for name, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(name, value, step)
        self.flush()

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def memory(device: torch.device) -> int:
    """Bytes: the GPU's peak allocation, or this process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

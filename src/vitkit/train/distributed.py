"""Several processes (torchrun): PyTorch's own process group, DDP, and exact reductions.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a no-op and
training runs in one process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup(device: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device); joins the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    dev = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum across processes (exact for the integer counts of a confusion matrix)."""
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def broadcast_int(value: int) -> int:
    """Rank 0's value everywhere (the epoch count chosen for a time budget)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

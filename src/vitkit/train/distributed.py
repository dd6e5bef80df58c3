"""Several processes (torchrun): PyTorch's own process group, FSDP2 sharding, and exact reductions.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a no-op and
training runs in one process.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

try:
    from torch.distributed.fsdp import FSDPModule, fully_shard
except ImportError:  # torch 2.4-2.5 kept FSDP2 under a private name
    from torch.distributed._composable.fsdp import FSDPModule, fully_shard

T = TypeVar("T")


def setup(device: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device); joins the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    dev = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(dev)
        # NCCL for the model's GPU tensors, gloo for the small CPU tensors of metrics and decisions
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", store=_attempt_store(rank, world),
                                rank=rank, world_size=world)
    return dist.get_rank(), dist.get_world_size(), dev


def _attempt_store(rank: int, world: int) -> dist.Store:
    """torchrun's key-value store outlives a restart (--max-restarts), and with it the addresses
    of the previous attempt's dead workers, which the new ones would try to connect to: each
    attempt gets its own key prefix."""
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent_hosts_it, multi_tenant=True)
    return dist.PrefixStore(f"vitkit/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum across processes (exact for the integer counts of a confusion matrix)."""
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def all_max(value: int) -> int:
    if not dist.is_initialized():
        return value
    box = torch.tensor([value])
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())


def any_true(flag: bool) -> bool:
    """True on every process if it is true on one: all processes stop (or skip a step) together,
    since one that went on alone would wait forever in the next collective."""
    return bool(all_max(int(flag)))


def broadcast(value: T) -> T:
    """Rank 0's value everywhere (the epoch count chosen for a time budget, the run directory)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def fully_shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2: each encoder block, then the rest (embeddings, norm, head), becomes one unit whose
    parameters, gradients and optimizer state are split across processes and gathered only while
    that unit computes: a model that does not fit one device trains on several. `model` may be
    on the CPU; each process's shards are moved to `device`."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

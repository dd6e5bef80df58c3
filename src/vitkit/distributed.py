"""Several processes (torchrun): who this process is, and the few collectives the loop needs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them `World` is one process and every
collective returns its input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from vitkit import runtime

try:
    from torch.distributed.fsdp import FSDPModule, fully_shard
except ImportError:  # torch 2.4-2.5 kept FSDP2 under a private name
    from torch.distributed._composable.fsdp import FSDPModule, fully_shard

T = TypeVar("T")
CPU = torch.device("cpu")


@dataclass(frozen=True)
class World:
    """This process's rank, the number of processes, its device, and the collectives. Every
    decision that changes what a process does next (stop, skip a step, how many epochs) goes
    through one, since a process that went on alone would wait forever in the next."""

    rank: int = 0
    size: int = 1
    device: torch.device = CPU

    @classmethod
    def setup(cls, device: str | None = None) -> World:
        """One process, or join torchrun's process group: NCCL for the model's GPU tensors,
        gloo for the small CPU tensors of metrics and decisions."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls(0, 1, runtime.device(device))
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        cuda = runtime.device(device).type == "cuda"
        dev = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(dev)
            dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", store=_attempt_store(rank, size),
                                    rank=rank, world_size=size)
        return cls(dist.get_rank(), dist.get_world_size(), dev)

    @property
    def main(self) -> bool:
        """Rank 0 speaks and writes the run's files."""
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum across processes (exact for integer counts)."""
        if self.size == 1:
            return values
        values = values.detach().cpu().clone()
        dist.all_reduce(values)
        return values

    def max(self, value: int) -> int:
        if self.size == 1:
            return value
        box = torch.tensor([value])
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        return int(box.item())

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on one."""
        return bool(self.max(int(flag)))

    def broadcast(self, value: T) -> T:
        """Rank 0's value everywhere."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def shard(self, size: int) -> list[int] | None:
        """This process's share of an evaluation set: every image exactly once across processes."""
        return list(range(self.rank, size, self.size)) if self.size > 1 else None

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def _attempt_store(rank: int, world: int) -> dist.Store:
    """The key-value store the process group meets in, empty of earlier attempts' keys.

    Without torchrun's shared store (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1) rank 0 hosts a new
    store at a new port for each attempt. The shared store (torchrun's default) outlives a restart
    (--max-restarts), and with it the addresses of the dead workers, which new ones would connect
    to: each attempt gets its own key prefix. The attempt is not TORCHELASTIC_RESTART_COUNT, which
    each node counts for itself (a node whose workers did not fail restarts them at count 0): it
    is counted in the store, every process of an attempt joining once."""
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent_hosts_it, multi_tenant=True)
    if not agent_hosts_it:
        return store
    attempt = (store.add("vitkit/joined", 1) - 1) // world
    return dist.PrefixStore(f"vitkit/attempt-{attempt}", store)


def restarted(world: World) -> bool:
    """torchrun restarted the workers after one failed (--max-restarts), or Slurm requeued the job
    (SLURM_RESTART_COUNT). Asked of all processes: only the failed node's torchrun counts the restart."""
    counts = (os.environ.get(name, "0") for name in ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"))
    return world.any(any(count.isdigit() and int(count) > 0 for count in counts))


def fully_shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2: each unit the model names (its encoder blocks), then the rest, becomes one unit whose
    parameters, gradients and optimizer state are split across processes and gathered only while
    that unit computes: a model that does not fit one device trains on several. `model` may be
    on the CPU; each process's shards are moved to `device`."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for unit in model.blocks:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)

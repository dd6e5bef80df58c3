"""What a run trains with, built from its plan: the model (fresh, or the --init weights), its
EMA, the optimizer and schedule, DDP or FSDP with several processes, the compiled step's wrapper
and a distillation teacher."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vitkit import runtime
from vitkit.distributed import World, fully_shard_model
from vitkit.model.build import build_model
from vitkit.model.fast import use_training_kernels
from vitkit.train.distill import Teacher, load_teacher
from vitkit.train.optim import Schedule, build_optimizer
from vitkit.train.plan import Plan

log = logging.getLogger("vitkit")


@dataclass
class Parts:
    model: nn.Module  # what the optimizer updates
    forward: nn.Module  # the model, wrapped in DDP with several processes
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    teacher: Teacher | None
    bf16: bool
    sharded: bool  # FSDP

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


def build_parts(plan: Plan, world: World, init: nn.Module | None = None) -> Parts:
    """Model, EMA, optimizer and schedule; DDP or FSDP with several processes. `init`: the --init
    weights (never re-read on resume: the checkpoint has them)."""
    recipe = plan.recipe
    torch.manual_seed(recipe.seed)
    sharded = recipe.fsdp and world.size > 1
    model = initial_model(plan, init)  # on the CPU: with FSDP only each process's shard moves
    if not sharded:
        model.to(world.device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema), use_buffers=True) if recipe.ema else None
    if sharded:  # the optimizer must see the sharded parameters, so this comes first
        fully_shard_model(model, world.device)
        if ema is not None:
            fully_shard_model(ema.module, world.device)
    optimizer = build_optimizer(model, recipe, world.device, sharded)
    schedule = Schedule(recipe.lr, recipe.min_lr, int(recipe.warmup_epochs * plan.steps_per_epoch))
    bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and runtime.bf16_pays(world.device, plan.config))
    model.set_grad_checkpointing(recipe.grad_checkpointing)
    use_training_kernels(model, world.device)
    teacher = load_teacher(recipe.teacher, plan.config.num_classes, world.device,
                           plan.teacher_commit or recipe.teacher_revision) if recipe.teacher else None
    forward = DistributedDataParallel(model) if world.size > 1 and not sharded else model
    return Parts(model, forward, ema, optimizer, schedule, teacher, bf16, sharded)


def initial_model(plan: Plan, init: nn.Module | None) -> nn.Module:
    """A fresh model, or the --init weights in the planned architecture (stochastic depth and
    dropout are built into the blocks); with --freeze-backbone only the head learns."""
    if init is None:
        return build_model(plan.config)
    model = init
    if plan.config != init.config:
        model = build_model(plan.config)
        model.load_state_dict(init.state_dict())
        model.normalization = init.normalization
    if plan.recipe.freeze_backbone:  # linear probe
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("head.")
    return model


class CompiledOrEager:
    """torch.compile(fn), or fn itself for the rest of the run if compiling fails (no C++ compiler,
    an unsupported platform): a slower run beats a failed one. Compilation happens in the first
    call, so its time counts in --time-budget like any other step; the backward is compiled in
    the first `.backward()`, outside this guard. With `cuda_graphs`, each call is a whole step, its
    outputs used and its gradients zeroed before the next: the "reduce-overhead" mode then replays
    its forward and its backward as CUDA graphs."""

    def __init__(self, fn: Callable, cuda_graphs: bool = False):
        self.fn, self.cuda_graphs = fn, cuda_graphs
        self.compiled = torch.compile(fn, mode="reduce-overhead" if cuda_graphs else None)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                if self.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                return self.compiled(*args)
            except Exception as e:  # torch._dynamo and inductor raise many kinds
                log.warning("torch.compile failed (%s); training without it", str(e).strip().splitlines()[0][:200])
                self.compiled = None
        return self.fn(*args)

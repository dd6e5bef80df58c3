"""Training: from a data spec and a recipe to a run directory.

A `Run` goes through its phases in order, and reads that way: `plan` (data, recipe,
architecture), `build` (model, EMA, sharding, optimizer), `restore` (a resumed run's state),
`fit` (epochs of `step`s), `evaluate`, `save_checkpoint` and `publish`. Everything a run must
remember to resume is in its `Progress`.

The run directory holds `config.json` + `model.safetensors` (what `vitkit.load` reads),
`checkpoint.pt` (everything needed to resume), `metrics.jsonl`, `curves.png` and `train.log`.
Every random choice is a function of (seed, epoch, step), so a resumed run continues exactly as
an uninterrupted one would have, and the same seed on the same machine gives the same metrics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from vitkit import atomic
from vitkit.data import spec as data_spec
from vitkit.data.loader import mix_seed
from vitkit.data.normalization import HALF, Normalization
from vitkit.memory import keep_freed_memory
from vitkit.model.cnn import CNNConfig, build_model, config_from_dict
from vitkit.model.config import ViTConfig
from vitkit.model.fast import use_training_kernels
from vitkit.model.vit import ViT
from vitkit.train import checkpoint, plots
from vitkit.train.budget import BudgetPlanner
from vitkit.train.distill import distillation_losses, load_teacher
from vitkit.train.distributed import World, fully_shard_model, restarted
from vitkit.train.evaluate import autocast, evaluate
from vitkit.train.feed import Feed, build_feed
from vitkit.train.optim import Schedule, build_optimizer
from vitkit.train.recipe import Recipe, auto_recipe, fine_tune_recipe, regularisers
from vitkit.weights.native import save_weights

log = logging.getLogger("vitkit")
NO_FLIP = {"digits", "mnist"}  # a mirrored digit is another (or no) digit; Fashion-MNIST flips: a garment stays one
PLOT_EVERY_S = 10  # curves.png: after every epoch, but at most this often
PLOT_SECONDS = 0.3  # a plot's time until one is timed (0.26 s alone on the 2-core development CPU)
TIMING_KEYS = ("seconds", "train_seconds", "elapsed", "img_per_s", "loader_wait_s")  # differ run to run
CHANGEABLE_ON_RESUME = {"workers", "compile", "fsdp", "grad_checkpointing"}  # how, not what, a run computes
# Called with the run before every training step: for tests that inject faults, and for anyone
# who wants to watch or steer a run from Python.
STEP_HOOKS: list[Callable[[Run], None]] = []


class TrainingError(Exception):
    """Training cannot go on (bad numbers, bad data with --strict); the message says what to do."""


@dataclasses.dataclass
class EpochTotals:
    """The running sums of the epoch in progress; carried into a mid-epoch checkpoint so that a
    resumed epoch's metrics cover the whole epoch."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    load_wait: float = 0.0


@dataclasses.dataclass
class Progress:
    """Where a run is: saved in every checkpoint, restored on resume."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps finished in the epoch in progress
    global_step: int = 0
    epochs: int | None = None  # None until a --time-budget run has planned; the last may be cut short
    steps: int | None = None  # optimizer steps of the whole run (the plan, with --time-budget)
    elapsed: float = 0.0  # wall seconds of earlier attempts (the budget counts them)
    deadline: float = math.inf  # elapsed seconds by which training must stop (the last plan's; --time-budget)
    nonfinite: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    skipped_files: dict[str, str] = dataclasses.field(default_factory=dict)
    totals: EpochTotals = dataclasses.field(default_factory=EpochTotals)


@dataclasses.dataclass
class RunPaths:
    root: Path

    def __post_init__(self):
        self.root = Path(self.root)
        self.checkpoint = self.root / "checkpoint.pt"
        self.metrics = self.root / "metrics.jsonl"
        self.curves = self.root / "curves.png"
        self.log = self.root / "train.log"


def train(data: str = "digits", recipe: Recipe | None = None, given: set[str] | None = None,
          out: str | Path | None = None, resume: str | Path | None = None, strict: bool = False,
          device: str | None = None, progress: bool | None = None) -> dict:
    """Train (or resume) and return the final metrics. `given` names the recipe fields the user
    set; the rest are chosen for the data set by `auto_recipe`. `progress`: show a progress bar
    (default: when stderr is a terminal)."""
    return Run(data, recipe, given, out, resume, strict, device, progress).fit()


class Run:
    def __init__(self, data: str = "digits", recipe: Recipe | None = None, given: set[str] | None = None,
                 out: str | Path | None = None, resume: str | Path | None = None, strict: bool = False,
                 device: str | None = None, progress: bool | None = None):
        keep_freed_memory()  # for library callers too; the `vitkit` command has already
        self.world = World.setup(device)
        if not self.world.main:
            log.setLevel(logging.WARNING)  # one process speaks
        self.started, self.strict, self.step_times, self.last_plot = time.time(), strict, [], 0.0
        self.last_wall = 0.0  # the last step's wall seconds; 0 before this attempt's first (start-up, compilation)
        # The last plot's time (rank 0's, whose plan is broadcast): the run's last epoch always plots,
        # after the last plan, so the plans keep this much for it.
        self.plot_seconds = PLOT_SECONDS
        self.epoch_ended: float | None = None  # elapsed() when the last epoch of this attempt ended
        self.show_progress = sys.stderr.isatty() if progress is None else progress
        if resume is None and restarted() and out and RunPaths(out).checkpoint.exists():
            resume = out  # torchrun restarted the workers after a failure: continue from the checkpoint
            log.info("restart: resuming %s", out)
        self.saved = checkpoint.load(RunPaths(resume).checkpoint) if resume else None
        self.plan(data, recipe or Recipe(), given or set(), out or resume)
        self.build()
        self.progress = Progress(epochs=self.recipe.epochs)
        if self.recipe.epochs:
            self.progress.steps = self.recipe.epochs * self.steps_per_epoch
        if self.saved:
            self.restore()
        self.progress.skipped_files.update(self.splits.skipped)  # found while scanning the folders

    # -- plan ------------------------------------------------------------------------------------
    def plan(self, data: str, recipe: Recipe, given: set[str], out: str | Path | None) -> None:
        """The data, the recipe and the architecture: chosen for the data, or a resumed run's own."""
        if self.saved:
            recipe, data = resumed_recipe(self.saved, recipe, given, out), self.saved["data"]
        self.data = data
        self.splits = data_spec.load(data, val_split=recipe.val_split, seed=recipe.seed)
        check_data(self.splits, self.strict)
        self.init_model: ViT | None = None
        if self.saved:
            self.config = config_from_dict(self.saved["model_config"])
            normalization = Normalization.parse(self.saved["normalize"])
        elif recipe.init:
            recipe = self.plan_fine_tune(recipe, given)
            normalization = Normalization.parse(recipe.normalize or self.init_model.normalization or HALF)
        else:
            s = self.splits
            recipe, self.config = auto_recipe(recipe, given, s.image_size, s.channels, len(s.classes),
                                              len(s.train), self.flip_ok)
            normalization = Normalization.parse(recipe.normalize or HALF)
            if recipe.teacher and isinstance(self.config, ViTConfig):  # DeiT: a distillation token and head
                self.config = self.config.replace(distilled=True, class_token=True, pool="cls")
        if recipe.teacher and not getattr(self.config, "distilled", False):
            raise ValueError("--teacher needs a student with a distillation token: --init weights of a distilled "
                             "model (deit_*_distilled), or no --init")
        self.feed: Feed = build_feed(self.splits, recipe, self.config, normalization, self.world)
        self.recipe = self.feed.recipe
        self.steps_per_epoch = self.feed.sampler.batches_per_epoch()
        budget = self.recipe.time_budget if self.recipe.epochs is None else None
        self.planner = BudgetPlanner(budget, self.steps_per_epoch) if budget else None
        self.paths = RunPaths(out or self.world.broadcast(default_out(self.splits.name)))
        if restarted() and not out:
            log.warning("torchrun restarted the workers but this run has no --out: starting a new run in %s; "
                        "pass --out DIR so that a restart resumes from DIR's checkpoint", self.paths.root)
        self.paths.root.mkdir(parents=True, exist_ok=True)

    @property
    def flip_ok(self) -> bool:
        return self.splits.name not in NO_FLIP

    def plan_fine_tune(self, recipe: Recipe, given: set[str]) -> Recipe:
        """--init: the weights' own architecture (and what the user says of what they do not record),
        a new head for this data's classes, the position embedding resampled for --image-size
        (default: the weights' own size), and the fine-tuning recipe."""
        from vitkit.weights import load

        s = self.splits
        size = {"image_size": recipe.image_size} if recipe.image_size else {}
        model = load(recipe.init, num_classes=len(s.classes), **size, **recipe.model_overrides)
        if model.config.in_channels < s.channels:
            raise ValueError(f"the --init weights take {model.config.in_channels}-channel images and the data has "
                             f"{s.channels} channels; fine-tune weights made for {s.channels}-channel images")
        if model.config.in_channels > s.channels:
            log.info("gray images repeated to the %d channels the weights take", model.config.in_channels)
        recipe = fine_tune_recipe(recipe, given, max(model.config.image_hw), len(s.train), self.flip_ok)
        self.config = model.config
        if isinstance(self.config, ViTConfig):
            self.config = model.config.replace(**regularisers(recipe))
        if self.config != model.config:  # stochastic depth and dropout are built into the blocks
            normalization, state = model.normalization, model.state_dict()
            model = ViT(self.config)
            model.load_state_dict(state)
            model.normalization = normalization
        if recipe.freeze_backbone:  # linear probe: only the head learns
            for name, param in model.named_parameters():
                param.requires_grad = name.startswith("head.")
        self.init_model = model
        return recipe

    # -- build -----------------------------------------------------------------------------------
    def build(self) -> None:
        """Model, EMA, optimizer and schedule; DDP or FSDP with several processes."""
        recipe, world = self.recipe, self.world
        torch.manual_seed(recipe.seed)
        self.sharded = recipe.fsdp and world.size > 1
        self.model = self.initial_model()  # on the CPU: with FSDP only each process's shard moves
        if not self.sharded:
            self.model.to(world.device)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema), use_buffers=True) \
            if recipe.ema else None
        if self.sharded:  # the optimizer must see the sharded parameters, so this comes first
            fully_shard_model(self.model, world.device)
            if self.ema is not None:
                fully_shard_model(self.ema.module, world.device)
        self.optimizer = build_optimizer(self.model, recipe, world.device, self.sharded)
        self.schedule = Schedule(recipe.lr, recipe.min_lr, int(recipe.warmup_epochs * self.steps_per_epoch),
                                 recipe.epochs * self.steps_per_epoch if recipe.epochs else None)
        self.bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and bf16_pays(world.device, self.config))
        self.model.set_grad_checkpointing(recipe.grad_checkpointing)
        use_training_kernels(self.model, world.device)
        self.teacher = load_teacher(recipe.teacher, self.config.num_classes, world.device) if recipe.teacher else None
        self.forward = DistributedDataParallel(self.model) if world.size > 1 and not self.sharded else self.model
        # On one GPU a small model's step is bound by the host, Python and launching its hundreds of
        # kernels: replay it as CUDA graphs ("GPU check again" in benchmarks/RESULTS.md). Not with
        # --accum-steps (a replay would overwrite the earlier pieces' gradients) nor DDP/FSDP (not tried).
        graphs = world.device.type == "cuda" and world.size == 1 and recipe.accum_steps == 1
        self.compute = CompiledOrEager(self.losses, graphs) if recipe.compile else self.losses

    def initial_model(self) -> ViT:
        """A fresh model, or the --init weights (never re-read on resume: the checkpoint has them)."""
        return self.init_model if self.init_model is not None else build_model(self.config)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # -- restore ---------------------------------------------------------------------------------
    def restore(self) -> None:
        saved = self.saved
        checkpoint.restore_training(self.paths.checkpoint, saved, self.model, self.optimizer, self.ema)
        progress = dict(saved["progress"])
        totals = EpochTotals(**progress.pop("totals"))
        totals = totals if self.world.main else EpochTotals()  # the epoch's sums so far: one process carries them
        self.progress = Progress(**progress, totals=totals)
        if self.progress.epochs and not self.progress.steps:  # saved by a vitkit that planned in epochs
            self.progress.steps = self.progress.epochs * self.steps_per_epoch
        if self.progress.steps:
            self.schedule.total = self.progress.steps
        checkpoint.set_rng_state(saved["rng"])
        log.info("resuming %s at epoch %d, step %d", self.paths.root, self.progress.epoch + 1, self.progress.step)

    # -- fit -------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Epochs until the planned number; then the final outputs and the test set."""
        p = self.progress
        resumed_finished = p.epochs is not None and p.epoch >= p.epochs
        log.info("model: %s parameters, %s", f"{self.model.num_parameters():,}", json.dumps(self.config.to_dict()))
        log.info("data: %s (%d train, %d validation images, %d classes), batch %d, %s, %d workers, %d process%s",
                 self.splits.name, len(self.splits.train), len(self.splits.val), len(self.splits.classes),
                 self.recipe.batch_size, "bf16" if self.bf16 else "fp32", self.feed.workers, self.world.size,
                 "es" if self.world.size > 1 else "")
        with StopFlag() as self.stop:
            while p.epochs is None or p.epoch < p.epochs:
                self.train_epoch()
                self.end_epoch()
        if resumed_finished:  # resumed after the last checkpoint: its outputs may not have been written
            self.publish(final=True)
        return self.finish()

    def train_epoch(self) -> None:
        p, totals = self.progress, self.progress.totals
        self.feed.sampler.set_epoch(p.epoch, p.step)
        self.model.train()
        epoch_start = time.time() - totals.seconds
        planned = self.steps_per_epoch if p.steps is None else p.steps - p.epoch * self.steps_per_epoch
        bar = tqdm(total=min(self.steps_per_epoch, planned), initial=p.step, disable=not self.show_progress,
                   leave=False, desc=f"epoch {p.epoch + 1}" + (f"/{p.epochs}" if p.epochs else ""), file=sys.stderr)
        tick = time.time()
        for images, labels, problems in self.feed.loader:
            totals.load_wait += time.time() - tick
            for hook in STEP_HOOKS:
                hook(self)
            self.note_problems(problems)
            start = time.time()
            self.step(images, labels, epoch_start)
            self.step_times.append(time.time() - start)
            p.step, p.global_step = p.step + 1, p.global_step + 1
            if p.steps is None and (step_s := BudgetPlanner.step_seconds(self.step_times)):
                # a first plan; evaluation guessed at ~2.5x the training rate per image (forward only)
                self.plan_steps(step_s * 1.03, len(self.splits.val) * step_s / self.recipe.batch_size / 2.5)
            self.end_if_out_of_time(time.time() - tick)  # this step's wall seconds, loading included
            bar.update(1)
            if totals.seen and p.step % 10 == 0:
                bar.set_postfix(loss=f"{totals.loss_sum / totals.seen:.3f}",
                                img_s=f"{totals.seen / (time.time() - epoch_start):.0f}")
            if p.steps is not None and p.global_step >= p.steps:  # the plan's last epoch may end early
                break
            tick = time.time()
        bar.close()
        totals.seconds = time.time() - epoch_start

    # -- step ------------------------------------------------------------------------------------
    def step(self, images: torch.Tensor, labels: torch.Tensor, epoch_start: float) -> None:
        """One optimizer step over the global batch: this process's share of it, in --accum-steps
        pieces. The loss is a sum over this process's images scaled by (processes / images in the
        global batch), so that DDP's average of the gradients is the mean over every image used,
        however the failed decodes fell."""
        p, recipe, world = self.progress, self.recipe, self.world
        used, stop = world.sum(torch.tensor([len(labels), int(self.stop.requested)])).tolist()
        if stop:
            self.stop_here(epoch_start)
        if not used:  # every image of the global batch failed to decode
            return
        torch.manual_seed(mix_seed(recipe.seed, p.epoch, p.step, 1, world.rank))  # dropout, drop-path, mixing
        batch = self.feed.prepare(images, labels, p.epoch, p.step)
        self.schedule.apply(self.optimizer, p.global_step)
        pieces = max(1, min(recipe.accum_steps, len(batch.labels)))
        loss_sum, hits = torch.zeros((), device=world.device), torch.zeros((), device=world.device)
        teacher = self.teacher(batch.pixels) if self.teacher else torch.zeros(len(batch.labels), 0)
        chunks = [c.chunk(pieces) for c in (batch.images, batch.targets, batch.labels, batch.weights, teacher)]
        for i, (x, t, y, w, teach) in enumerate(zip(*chunks, strict=True)):
            with self.gradient_sync(last=i == pieces - 1):
                losses, logits = self.compute(x, t, w, teach if self.teacher else None)
                (losses.sum() * (world.size / used)).backward()
            loss_sum += losses.detach().sum()
            hits += ((logits.detach().argmax(1) == y) * w).sum()
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), recipe.clip_grad or math.inf)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor
        if world.any(not (torch.isfinite(loss_sum) and torch.isfinite(norm))):  # every process skips, or none
            return self.nonfinite(bool(torch.isfinite(loss_sum)))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        p.totals.loss_sum += loss_sum.item()
        p.totals.correct += int(hits.item())
        p.totals.seen += len(labels)

    def losses(self, x: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
               teacher: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image losses (zero for stand-in images) and the logits: the part of a step that
        --compile compiles, forward and backward. A distilled student's two heads learn the labels
        and the teacher's predictions (train/distill.py)."""
        with autocast(self.world.device, self.bf16):
            out = self.forward(x)
        smoothing = self.recipe.label_smoothing
        if isinstance(out, tuple):  # DeiT's (class head, distillation head)
            losses = distillation_losses(out, targets, teacher, self.recipe.distill, smoothing)
            return losses * weights, (out[0].float() + out[1].float()) / 2
        logits = out.float()
        return F.cross_entropy(logits, targets, label_smoothing=smoothing, reduction="none") * weights, logits

    def gradient_sync(self, last: bool):
        """Accumulation pieces before the last keep their gradients local: one all-reduce (DDP) or
        reduce-scatter (FSDP) per optimizer step instead of one per piece."""
        if self.sharded:
            self.model.set_requires_gradient_sync(last)
        elif isinstance(self.forward, DistributedDataParallel) and not last:
            return self.forward.no_sync()
        return nullcontext()

    def nonfinite(self, loss_was_finite: bool) -> None:
        """A NaN/inf loss or gradient (on any process): drop the step with --skip-nonfinite, else stop
        before the optimizer writes it into the weights."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.recipe.skip_nonfinite:
            self.progress.nonfinite += 1
            return
        what = "gradient" if loss_was_finite else "loss"
        raise TrainingError(
            f"the {what} became NaN or infinite at epoch {self.progress.epoch + 1}, step {self.progress.step + 1}; "
            f"stopped, the last good checkpoint is kept. Likely fixes: a lower --lr (now {self.recipe.lr}), "
            "--precision fp32, a smaller --clip-grad, or --skip-nonfinite to drop such steps")

    def stop_here(self, epoch_start: float) -> None:
        """SIGINT/SIGTERM on any process: every process saves the mid-epoch state and stops."""
        totals = self.progress.totals
        totals.seconds = time.time() - epoch_start
        self.progress.totals = self.epoch_totals()
        self.save_checkpoint()
        raise KeyboardInterrupt(f"checkpoint saved at epoch {self.progress.epoch + 1}, step {self.progress.step}; "
                                f"continue with: vitkit train --resume {self.paths.root}")

    def note_problems(self, problems: list[tuple[str, str]]) -> None:
        for name, reason in problems:
            if self.strict:
                raise TrainingError(f"cannot read {name}: {reason} (--strict)")
            self.progress.skipped_files[name] = reason

    # -- the time budget ---------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.progress.elapsed + time.time() - self.started

    def replan(self, record: dict) -> None:
        """Plan again from the epoch that just ended: its seconds per step, and everything else an
        epoch costs (evaluation, and the last epoch's checkpoint and files)."""
        train_s = record["train_seconds"]
        if self.epoch_ended is None:  # the first epoch of this attempt: less its start-up and compilation
            train_s = BudgetPlanner.steady_seconds(train_s, self.step_times)
            other_s = record["seconds"] - record["train_seconds"]  # only its evaluation is known
        else:
            other_s = self.elapsed() - self.epoch_ended - record["train_seconds"]
        self.plan_steps(train_s / max(record["steps"], 1), other_s)

    def plan_steps(self, step_seconds: float, eval_seconds: float) -> None:
        """The run's steps (budget.py) and so its epochs and the schedule's length."""
        p = self.progress
        test = len(self.splits.test) / max(len(self.splits.val), 1) if self.splits.test is not None else 0.0
        final_seconds = test * eval_seconds + self.plot_seconds
        p.steps = self.world.broadcast(self.planner.steps(self.elapsed(), p.global_step, step_seconds, eval_seconds,
                                                          final_seconds))
        p.epochs = math.ceil(p.steps / self.steps_per_epoch)
        self.schedule.total = p.steps
        p.deadline = self.planner.deadline(eval_seconds, final_seconds)

    def end_if_out_of_time(self, wall: float) -> None:
        """The backstop for steps that slow down within an epoch, which the plans (made at epochs'
        ends) see too late: once one more step as long as the shorter of the last two (one hiccup is
        not a slowdown) would pass the deadline, this step is the run's last. The plans end ~3% of
        what was left at the last plan short of the deadline, so a run meets it only when it runs
        slower than its plan by more than that. Rank 0's clock decides for every process; all call
        this at the same steps."""
        p, shorter, self.last_wall = self.progress, min(wall, self.last_wall), wall
        if not self.planner or p.steps is None or p.global_step >= p.steps:
            return
        if self.world.any(self.world.main and self.elapsed() + shorter > p.deadline):
            if self.world.main:
                log.warning("time budget: the steps ran slower than planned; ending after step %d of %d to stay "
                            "within %.0f s", p.global_step, p.steps, self.planner.budget)
            p.steps, p.epochs = p.global_step, p.epoch + 1  # the schedule keeps its length: ends undecayed

    # -- evaluate, save, publish -------------------------------------------------------------------
    def epoch_totals(self) -> EpochTotals:
        """This epoch's sums over every process."""
        t = self.progress.totals
        loss_sum, correct, seen = self.world.sum(torch.tensor([t.loss_sum, t.correct, t.seen],
                                                              dtype=torch.float64)).tolist()
        return EpochTotals(loss_sum, int(correct), int(seen), t.seconds, t.load_wait)

    def evaluate(self, loader) -> dict:
        start = time.time()
        result = evaluate(self.eval_model, loader, len(self.splits.classes), self.world.device, self.bf16,
                          self.feed.normalization, self.world)
        for name, reason in result["skipped"]:
            self.progress.skipped_files[name] = reason
        return result | {"seconds": time.time() - start}

    def end_epoch(self) -> None:
        """Validation, the epoch's record, the plan, the checkpoint and the run's files."""
        p = self.progress
        totals = self.epoch_totals()
        val = self.evaluate(self.feed.val_loader)
        record = {
            "epoch": p.epoch + 1, "steps": p.step, "train_loss": totals.loss_sum / max(totals.seen, 1),
            "train_top1": totals.correct / totals.seen if totals.seen and self.feed.mixer is None else None,
            "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
            "lr": self.schedule.lr(p.global_step - 1), "img_per_s": totals.seen / max(totals.seconds, 1e-9),
            "loader_wait_s": totals.load_wait, "train_seconds": totals.seconds,
            "seconds": totals.seconds + val["seconds"], "elapsed": self.elapsed(), "nonfinite_steps": p.nonfinite,
        }
        p.history.append(record)
        p.epoch, p.step, p.totals = p.epoch + 1, 0, EpochTotals()
        if self.planner and (p.epochs is None or p.epoch < p.epochs):
            self.replan(record)
        self.epoch_ended = self.elapsed()
        self.save_checkpoint()
        self.publish(final=p.epoch == p.epochs)
        log_epoch(record, p.epochs)

    def save_checkpoint(self) -> None:
        progress = dataclasses.asdict(self.progress) | {"elapsed": self.elapsed()}
        checkpoint.save_training(self.paths.checkpoint, self.model, self.optimizer, self.ema, {
            "progress": progress, "data": self.data, "recipe": self.recipe.to_dict(),
            "normalize": self.feed.normalization.to_dict(),
            "model_config": self.config.to_dict(), "classes": self.splits.classes,
        }, self.progress.global_step, self.sharded, self.world)

    def publish(self, final: bool) -> None:
        """The run's user-facing files, from the state the checkpoint holds."""
        weights = checkpoint.full_model_state(self.eval_model)  # with FSDP, every process takes part
        if not self.world.main:
            return
        meta = {"classes": self.splits.classes, "normalize": self.feed.normalization.to_dict(), "data": self.data,
                "recipe": self.recipe.to_dict()}
        save_weights(weights, self.config, self.paths.root, meta)
        atomic.write_text(self.paths.metrics, "".join(json.dumps(h) + "\n" for h in self.progress.history))
        if final or time.time() - self.last_plot > PLOT_EVERY_S:
            start = time.time()
            plots.curves(self.progress.history, self.paths.curves)
            self.last_plot = time.time()
            self.plot_seconds = self.last_plot - start

    def finish(self) -> dict:
        """The result, with the test split (when the data has one) scored once, at the end."""
        p = self.progress
        last = p.history[-1]
        result = {"run": str(self.paths.root), "epochs": p.epochs, "steps": p.global_step, "seconds": self.elapsed(),
                  "val_top1": last["val_top1"], "val_loss": last["val_loss"], "nonfinite_steps": p.nonfinite,
                  "skipped_files": len(p.skipped_files)}
        if self.splits.test is not None:
            result["test_top1"] = self.evaluate(self.feed.test_loader(self.splits))["top1"]
        if self.world.main:
            write_log(self.paths, p.skipped_files, result)
        self.world.barrier()
        return result


# -- helpers -------------------------------------------------------------------------------------
class StopFlag:
    """SIGTERM and the first Ctrl-C ask the loop to stop at the next step boundary (so the
    checkpoint is consistent); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self.previous:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


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


def bf16_pays(device: torch.device, config: ViTConfig | CNNConfig) -> bool:
    """On CPU, bf16 pays only with AMX or AVX512-BF16, and (measured) only for models of width
    >= 128: a width-64 model trains at 3300 img/s in fp32 but 1600 img/s under bf16 autocast."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if getattr(config, "dim", 128) < 128:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resumed_recipe(saved: dict, recipe: Recipe, given: set[str], run: str | Path) -> Recipe:
    """The run's own recipe, with only how it computes changed (--workers, --compile, --fsdp);
    a flag that would change what the run computes is refused (the same value is fine: torchrun's
    restarts and a re-run command repeat the original flags)."""
    refused = sorted(k for k in given - CHANGEABLE_ON_RESUME if getattr(recipe, k) != saved["recipe"].get(k))
    if refused:
        flag = "--" + refused[0].replace("_", "-")
        raise ValueError(f"{flag} cannot change when resuming (the run keeps its recipe: "
                         f"{flag} {saved['recipe'].get(refused[0])}); drop {flag}, or start a new run "
                         f"with --init {run} to train further with other settings")
    return Recipe(**{**saved["recipe"], **{k: getattr(recipe, k) for k in given}})


def check_data(splits: data_spec.DataSplits, strict: bool) -> None:
    if splits.train is None or not len(splits.train):
        raise ValueError(f"data set {splits.name!r} has no training images")
    if len(splits.classes) < 2:
        raise ValueError(f"data set {splits.name!r} has only {len(splits.classes)} class "
                         f"({splits.classes}); a classifier needs at least two class folders")
    if strict and splits.skipped:
        name, reason = splits.skipped[0]
        raise TrainingError(f"cannot read {name}: {reason} (--strict)")


def default_out(data_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{data_name.replace(':', '-').replace('/', '_')}-{stamp}"


def log_epoch(record: dict, epochs: int | None) -> None:
    log.info("epoch %d/%s  train loss %.4f  val loss %.4f  val top-1 %.2f%%  lr %.2e  %.0f img/s  %.1f s",
             record["epoch"], epochs, record["train_loss"], record["val_loss"], 100 * record["val_top1"],
             record["lr"], record["img_per_s"], record["seconds"])
    busy = max(record["train_seconds"] - record["loader_wait_s"], 1e-9)
    log.debug("  model %.0f img/s while computing; waited %.2f s of %.1f s for data",
              record["img_per_s"] * record["train_seconds"] / busy, record["loader_wait_s"], record["train_seconds"])


def write_log(paths: RunPaths, skipped: dict[str, str], result: dict) -> None:
    lines = [f"result: {json.dumps(result)}", f"skipped files: {len(skipped)}"]
    lines += [f"  {name}: {reason}" for name, reason in sorted(skipped.items())]
    atomic.write_text(paths.log, "\n".join(lines) + "\n")
    if skipped:
        log.warning("skipped %d unreadable file(s); see %s", len(skipped), paths.log)

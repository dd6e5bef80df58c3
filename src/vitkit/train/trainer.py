"""Training: from a data spec and a recipe to a run folder.

`train` reads what a run needs (the data, a checkpoint to resume, the --init weights), plans the
run (plan.py: every decision, no I/O), builds what it trains (parts.py) and hands them to a
`Run`, whose loop reads top to bottom: an epoch of steps, then its evaluation, checkpoint and
files (outputs.py). Everything a run must remember to resume is in `checkpoint.pt`: its
`Progress`, its `Budget` and the parts' state. Every random choice is a function of (seed, epoch,
step), so a resumed run continues exactly as an uninterrupted one would have, and the same seed
on the same machine gives the same metrics.
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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vitkit import runtime
from vitkit.data import spec as data_spec
from vitkit.data.loader import mix_seed
from vitkit.distributed import World, restarted
from vitkit.evaluate import evaluate
from vitkit.model import noise
from vitkit.train import checkpoint, flexi, outputs
from vitkit.train.board import Board
from vitkit.train.budget import Budget
from vitkit.train.distill import distillation_losses
from vitkit.train.feed import Feed, build_feed
from vitkit.train.naflex_feed import build_naflex_feed
from vitkit.train.outputs import RunPaths
from vitkit.train.parts import CompiledOrEager, Parts, build_parts
from vitkit.train.plan import Plan, TrainingError, plan
from vitkit.train.recipe import Recipe

log = logging.getLogger("vitkit")
# Called with the run before every training step: for tests that inject faults, and for anyone
# who wants to watch or steer a run from Python.
STEP_HOOKS: list[Callable[[Run], None]] = []


@dataclasses.dataclass
class EpochTotals:
    """The running sums of the epoch in progress; carried into a mid-epoch checkpoint so that a
    resumed epoch's metrics cover the whole epoch."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    load_wait: float = 0.0
    lr: float = 0.0  # the rate of the epoch's last step, as the step applied it


@dataclasses.dataclass
class Progress:
    """Where a run is: saved in every checkpoint, restored on resume."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps finished in the epoch in progress
    global_step: int = 0
    nonfinite: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    skipped_files: dict[str, str] = dataclasses.field(default_factory=dict)
    totals: EpochTotals = dataclasses.field(default_factory=EpochTotals)


def train(data: str = "digits", recipe: Recipe | None = None, given: set[str] | None = None,
          out: str | Path | None = None, resume: str | Path | None = None, strict: bool = False,
          device: str | None = None, progress: bool | None = None,
          clock: Callable[[], float] = time.monotonic) -> dict:
    """Train (or resume) and return the final metrics. `given` names the recipe fields the user
    set; the rest are chosen for the data set. `progress`: show a progress bar (default: when
    stderr is a terminal). `clock`: what the run's time, and its --time-budget, are measured by."""
    return start(data, recipe, given, out, resume, strict, device, progress, clock=clock).fit()


def start(data: str = "digits", recipe: Recipe | None = None, given: set[str] | None = None,
          out: str | Path | None = None, resume: str | Path | None = None, strict: bool = False,
          device: str | None = None, progress: bool | None = None,
          clock: Callable[[], float] = time.monotonic) -> Run:
    """A run ready to `fit`: the files it needs read, its plan made, its parts built, a resumed
    run's state restored. The data spec goes from here to `data_spec.read` (the images), to
    `plan` (the splits, the recipe, the model) and to `build_feed` (the loaders)."""
    began = clock()  # the budget counts the reading and building too
    runtime.keep_freed_memory()  # for library callers too (the `vitkit` command has already done it)
    world = World.setup(device)
    if not world.main:
        log.setLevel(logging.WARNING)  # one process speaks
    restart = restarted(world)
    if resume is None and restart and out and RunPaths(Path(out)).checkpoint.exists():
        resume = out  # torchrun restarted the workers after a failure: continue from the checkpoint
        log.info("restart: resuming %s", out)
    saved = {**checkpoint.load(RunPaths(Path(resume)).checkpoint), "run": str(resume)} if resume else None
    recipe, given = recipe or Recipe(), set(given or ())
    spec = saved["data"] if saved else data
    splits = data_spec.read(spec)
    init = open_init(recipe, splits) if recipe.init and not saved else None
    planned = plan(spec, splits, recipe, given, init, saved, world.size, strict)
    paths = RunPaths(Path(out or resume or world.broadcast(outputs.default_out(splits.name))))
    if restart and not out:
        log.warning("torchrun or Slurm restarted this run but it has no --out: starting a new run in %s; "
                    "pass --out DIR so that a restart resumes from DIR's checkpoint", paths.root)
    paths.root.mkdir(parents=True, exist_ok=True)
    s = planned.splits
    budget = Budget(planned.recipe.time_budget if planned.recipe.epochs is None else None, planned.steps_per_epoch,
                    planned.steps, len(s.val) / planned.recipe.batch_size,
                    len(s.test) / max(len(s.val), 1) if s.test is not None else 0.0, world, clock, began)
    feed = (build_naflex_feed if planned.recipe.max_tokens else build_feed)(planned, world)  # --max-tokens: NaFlex
    run = Run(planned, build_parts(planned, world, init), feed, world, paths, budget,
              sys.stderr.isatty() if progress is None else progress, strict)
    if saved:
        run.restore(saved)
    run.board = Board(paths.root, planned.recipe.tensorboard and world.main, run.progress.global_step)
    return run


def open_init(recipe: Recipe, splits: data_spec.DataSplits) -> nn.Module:
    """--init: the weights' own architecture (and what the user says of what they do not record),
    a new head for this data's classes, the position embedding resampled for --image-size
    (default: the weights' own size)."""
    from vitkit.weights import load

    size = {"image_size": recipe.image_size} if recipe.image_size else {}
    model = load(recipe.init, revision=recipe.revision, num_classes=len(splits.classes), **size,
                 **recipe.model_overrides)
    if model.config.in_channels < splits.channels:
        raise ValueError(f"the --init weights take {model.config.in_channels}-channel images and the data has "
                         f"{splits.channels} channels; fine-tune weights made for {splits.channels}-channel images")
    if model.config.in_channels > splits.channels:
        log.info("gray images repeated to the %d channels the weights take", model.config.in_channels)
    return model


class Run:
    """A run in progress: its plan, what it trains, where it is, and its clock. `start` builds
    one; the constructor reads and writes nothing."""

    def __init__(self, plan: Plan, parts: Parts, feed: Feed, world: World, paths: RunPaths, budget: Budget,
                 show_progress: bool = False, strict: bool = False):
        self.plan, self.parts, self.feed, self.world = plan, parts, feed, world
        self.paths, self.budget, self.show_progress, self.strict = paths, budget, show_progress, strict
        self.progress = Progress(skipped_files=dict(plan.splits.skipped))
        # On one GPU a small model's step is bound by the host, Python and launching its hundreds of
        # kernels: replay it as CUDA graphs. Not with --accum-steps (a replay would overwrite the
        # earlier pieces' gradients) nor DDP/FSDP (not tried).
        graphs = world.device.type == "cuda" and world.size == 1 and plan.recipe.accum_steps == 1
        self.compute = CompiledOrEager(self.losses, graphs) if plan.recipe.compile else self.losses
        self.stop, self.board = StopFlag(), Board(paths.root, on=False, step=0)  # `start` opens the event file

    def restore(self, saved: dict[str, Any]) -> None:
        """A resumed run's model, optimizer, EMA, progress, plan and random state."""
        parts = self.parts
        checkpoint.restore_training(self.paths.checkpoint, saved, parts.model, parts.optimizer, parts.ema)
        progress = dict(saved["progress"])
        totals = EpochTotals(**progress.pop("totals"))
        totals = totals if self.world.main else EpochTotals()  # the epoch's sums so far: one process carries them
        legacy = {k: progress.pop(k) for k in ("epochs", "steps", "elapsed", "deadline") if k in progress}
        budget = saved.get("budget", legacy)  # earlier versions kept the budget's state in the progress
        self.progress = Progress(**progress, totals=totals)
        self.budget.load_state_dict(budget)
        checkpoint.set_rng_state(saved["rng"])
        log.info("resuming %s at epoch %d, step %d", self.paths.root, self.progress.epoch + 1, self.progress.step)

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Epochs until the run's length; then the final outputs and the test set."""
        p, s = self.progress, self.plan.splits
        resumed_finished = self.budget.ends_at(p.global_step)
        log.info("model: %s parameters, %s", f"{self.parts.model.num_parameters():,}",
                 json.dumps(self.plan.config.to_dict()))
        log.info("data: %s (%d train, %d validation images, %d classes), batch %d, %s, %d workers, %d process%s",
                 s.name, len(s.train), len(s.val), len(s.classes), self.plan.recipe.batch_size,
                 "bf16" if self.parts.bf16 else "fp32", self.feed.workers, self.world.size,
                 "es" if self.world.size > 1 else "")
        with self.stop:
            while self.budget.epochs is None or p.epoch < self.budget.epochs:
                self.train_epoch()
                self.end_epoch()
        if resumed_finished:  # resumed after the last checkpoint: its outputs may not have been written
            self.publish(final=True)
        return self.finish()

    def train_epoch(self) -> None:
        p, totals, budget = self.progress, self.progress.totals, self.budget
        self.feed.sampler.set_epoch(p.epoch, p.step)
        self.parts.model.train()
        epoch_start = budget.now() - totals.seconds
        bar = progress_bar(p, self.budget, self.plan.steps_per_epoch, self.show_progress)
        budget.begin_epoch()
        tick = budget.now()
        for images, labels, problems in self.feed.loader:
            totals.load_wait += budget.now() - tick
            for hook in STEP_HOOKS:
                hook(self)
            self.note_problems(problems)
            used, stop = self.world.sum(torch.tensor([len(labels), int(self.stop.requested)])).tolist()
            if stop:
                self.stop_here(epoch_start)
            if used:  # else every image of the global batch failed to decode
                with flexi.at_step_patch_size(self):  # --flexi-patch
                    self.step(images, labels, used)
            p.step, p.global_step = p.step + 1, p.global_step + 1
            budget.end_step(p.global_step)
            bar.update(1)
            if totals.seen and p.step % 10 == 0:
                bar.set_postfix(loss=f"{totals.loss_sum / totals.seen:.3f}",
                                img_s=f"{totals.seen / (budget.now() - epoch_start):.0f}")
            if budget.ends_at(p.global_step):  # the plan's last epoch may end early
                break
            tick = budget.now()
        bar.close()
        totals.seconds = budget.now() - epoch_start

    def step(self, images: torch.Tensor, labels: torch.Tensor, used: int | None = None) -> None:
        """One optimizer step over the global batch: this process's share of it, in --accum-steps
        pieces, at the schedule's learning rate. The loss is a sum over this process's images scaled
        by (processes / `used`, the images in the global batch), so that DDP's average of the
        gradients is the mean over every image used, however the failed decodes fell."""
        p, recipe, world, parts = self.progress, self.plan.recipe, self.world, self.parts
        used = used or len(labels)
        torch.manual_seed(mix_seed(recipe.seed, p.epoch, p.step, 1, world.rank))  # dropout, drop-path, mixing
        batch = self.feed.prepare(images, labels, p.epoch, p.step)
        lr = parts.schedule.lr(p.global_step, self.budget.steps)
        for group in parts.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        pieces = max(1, min(recipe.accum_steps, len(batch.labels)))
        loss_sum, hits = torch.zeros((), device=world.device), torch.zeros((), device=world.device)
        teacher = parts.teacher(batch.pixels) if parts.teacher else torch.zeros(len(batch.labels), 0)
        keys = self.noise_keys(len(batch.labels))
        chunks = [c.chunk(pieces) for c in (batch.images, batch.targets, batch.labels, batch.weights, teacher, keys)]
        for i, (x, t, y, w, teach, key) in enumerate(zip(*chunks, strict=True)):
            with self.gradient_sync(last=i == pieces - 1):
                losses, logits = self.compute(x, t, w, teach if parts.teacher else None, key)
                (losses.sum() * (world.size / used)).backward()
            loss_sum += losses.detach().sum()
            hits += ((logits.detach().argmax(1) == y) * w).sum()
        norm = nn.utils.clip_grad_norm_(parts.model.parameters(), recipe.clip_grad or math.inf)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor
        if world.any(not (torch.isfinite(loss_sum) and torch.isfinite(norm))):  # every process skips, or none
            return self.nonfinite(bool(torch.isfinite(loss_sum)))
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        if parts.ema is not None:
            parts.ema.update_parameters(parts.model)
        self.board.step(p.global_step + 1, loss_sum.item() / len(batch.labels), lr)
        p.totals.loss_sum, p.totals.lr = p.totals.loss_sum + loss_sum.item(), lr
        p.totals.correct += int(hits.item())
        p.totals.seen += len(labels)

    def noise_keys(self, images: int) -> torch.Tensor:
        """A key per image for the model's patch dropout and stochastic depth, from the seed, the
        step and the image's place in the global batch: N processes draw what one process draws."""
        p, world = self.progress, self.world
        first = world.rank * (self.plan.recipe.batch_size // world.size)
        places = torch.arange(first, first + images, device=world.device)
        return noise.keys(mix_seed(self.plan.recipe.seed, p.epoch, p.step, 3), places)

    def losses(self, x: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
               teacher: torch.Tensor | None = None, keys: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image losses (zero for stand-in images) and the logits: the part of a step that
        --compile compiles, forward and backward. A distilled student's two heads learn the labels
        and the teacher's predictions (train/distill.py)."""
        with runtime.autocast(self.world.device, self.parts.bf16):
            out = self.parts.forward(x, noise=keys)
        smoothing = self.plan.recipe.label_smoothing
        if isinstance(out, tuple):  # DeiT's (class head, distillation head)
            losses = distillation_losses(out, targets, teacher, self.plan.recipe.distill, smoothing)
            return losses * weights, (out[0].float() + out[1].float()) / 2
        logits = out.float()
        return F.cross_entropy(logits, targets, label_smoothing=smoothing, reduction="none") * weights, logits

    def gradient_sync(self, last: bool):
        """Accumulation pieces before the last keep their gradients local: one all-reduce (DDP) or
        reduce-scatter (FSDP) per optimizer step instead of one per piece."""
        if self.parts.sharded:
            self.parts.model.set_requires_gradient_sync(last)
        elif isinstance(self.parts.forward, DistributedDataParallel) and not last:
            return self.parts.forward.no_sync()
        return nullcontext()

    # -- what stops a step ---------------------------------------------------------------------------
    def nonfinite(self, loss_was_finite: bool) -> None:
        """A NaN/inf loss or gradient (on any process): drop the step with --skip-nonfinite, else stop
        before the optimizer writes it into the weights."""
        self.parts.optimizer.zero_grad(set_to_none=True)
        if self.plan.recipe.skip_nonfinite:
            self.progress.nonfinite += 1
            return
        what = "gradient" if loss_was_finite else "loss"
        raise TrainingError(
            f"the {what} became NaN or infinite at epoch {self.progress.epoch + 1}, step {self.progress.step + 1}; "
            f"stopped, the last good checkpoint is kept. Likely fixes: a lower --lr (now {self.plan.recipe.lr}), "
            "--precision fp32, a smaller --clip-grad, or --skip-nonfinite to drop such steps")

    def stop_here(self, epoch_start: float) -> None:
        """SIGINT/SIGTERM on any process: every process saves the mid-epoch state and stops."""
        self.progress.totals.seconds = self.budget.now() - epoch_start
        self.progress.totals = self.epoch_totals()
        self.save_checkpoint()
        raise KeyboardInterrupt(f"checkpoint saved at epoch {self.progress.epoch + 1}, step {self.progress.step}; "
                                f"continue with: vitkit train --resume {self.paths.root}")

    def note_problems(self, problems: list[tuple[str, str]]) -> None:
        for name, reason in problems:
            if self.strict:
                raise TrainingError(f"cannot read {name}: {reason} (--strict)")
            self.progress.skipped_files[name] = reason

    # -- after an epoch: evaluate, plan, save, publish -----------------------------------------------
    def end_epoch(self) -> None:
        """Validation, the epoch's record, the plan, the checkpoint and the run's files."""
        p = self.progress
        totals = self.epoch_totals()
        val = self.evaluate(self.plan.splits.val)
        record = {
            "epoch": p.epoch + 1, "steps": p.step, "train_loss": totals.loss_sum / max(totals.seen, 1),
            "train_top1": totals.correct / totals.seen if totals.seen and self.feed.mixer is None else None,
            "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
            "lr": totals.lr,
            "img_per_s": totals.seen / max(totals.seconds, 1e-9), "loader_wait_s": totals.load_wait,
            "train_seconds": totals.seconds, "seconds": totals.seconds + val["seconds"],
            "elapsed": self.budget.elapsed(), "nonfinite_steps": p.nonfinite,
        }
        p.history.append(record)
        p.epoch, p.step, p.totals = p.epoch + 1, 0, EpochTotals()
        self.budget.end_epoch(p.global_step, record["steps"], totals.seconds, val["seconds"])
        self.board.epoch(p.global_step, record, self.world.device)
        self.save_checkpoint()
        self.publish(final=p.epoch == self.budget.epochs)
        outputs.log_epoch(record, self.budget.epochs)

    def epoch_totals(self) -> EpochTotals:
        """This epoch's sums over every process."""
        t = self.progress.totals
        loss_sum, correct, seen = self.world.sum(torch.tensor([t.loss_sum, t.correct, t.seen],
                                                              dtype=torch.float64)).tolist()
        return EpochTotals(loss_sum, int(correct), int(seen), t.seconds, t.load_wait, t.lr)

    def evaluate(self, images: torch.utils.data.Dataset) -> dict:
        start = self.budget.now()
        result = evaluate(self.parts.eval_model, self.feed.held_out(images), len(self.plan.splits.classes),
                          self.world.device, self.parts.bf16, self.plan.normalization, self.world)
        self.note_problems(result["skipped"])  # --strict stops on a held-out split's bad image too
        return result | {"seconds": self.budget.now() - start}

    def save_checkpoint(self) -> None:
        plan, parts = self.plan, self.parts
        self.board.flush()  # what the board says never runs ahead of what a resume keeps
        checkpoint.save_training(self.paths.checkpoint, parts.model, parts.optimizer, parts.ema, {
            "progress": dataclasses.asdict(self.progress), "budget": self.budget.state_dict(), "data": plan.data,
            "recipe": plan.recipe.to_dict(), "normalize": plan.normalization.to_dict(),
            "model_config": plan.config.to_dict(), "classes": plan.splits.classes, "processes": self.world.size,
            "init_commit": plan.init_commit, "teacher_commit": parts.teacher.commit if parts.teacher else None,
        }, self.progress.global_step, parts.sharded, self.world)

    def publish(self, final: bool) -> None:
        """The run's user-facing files, from the state the checkpoint holds."""
        weights = checkpoint.full_model_state(self.parts.eval_model)  # with FSDP, every process takes part
        if not self.world.main:
            return
        outputs.write_weights(self.paths, weights, self.plan)
        outputs.write_metrics(self.paths, self.progress.history)
        self.budget.plot(lambda: outputs.draw_curves(self.paths, self.progress.history), final)

    def finish(self) -> dict:
        """The result, with the test split (when the data has one) scored once, at the end."""
        p, test = self.progress, self.plan.splits.test
        last = p.history[-1]
        result = {"run": str(self.paths.root), "epochs": self.budget.epochs, "steps": p.global_step,
                  "seconds": self.budget.elapsed(), "val_top1": last["val_top1"], "val_loss": last["val_loss"],
                  "nonfinite_steps": p.nonfinite, "skipped_files": len(p.skipped_files)}
        if test is not None:
            result["test_top1"] = self.evaluate(test)["top1"]
        if self.world.main:
            outputs.write_log(self.paths, p.skipped_files, result)
        self.board.close()
        self.world.barrier()
        return result



def progress_bar(p: Progress, budget: Budget, per_epoch: int, show: bool) -> tqdm:
    """The epoch's bar: its steps (the plan's last epoch may be shorter), images/s and time left."""
    planned = per_epoch if budget.steps is None else budget.steps - p.epoch * per_epoch
    return tqdm(total=min(per_epoch, planned), initial=p.step, disable=not show, leave=False,
                desc=f"epoch {p.epoch + 1}" + (f"/{budget.epochs}" if budget.epochs else ""), file=sys.stderr)


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

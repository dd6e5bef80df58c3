"""Training: from a data spec and a recipe to a run directory.

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
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from vitkit import atomic
from vitkit.data import spec as data_spec
from vitkit.data import transforms
from vitkit.data.datasets import ArrayImages, FileImages
from vitkit.data.loader import EpochSampler, default_workers, eval_loader, mix_seed, train_loader
from vitkit.model.config import ViTConfig
from vitkit.model.fast import training_attention
from vitkit.model.vit import ViT
from vitkit.train import checkpoint, distributed, plots
from vitkit.train.evaluate import autocast, evaluate
from vitkit.train.recipe import Recipe, auto_recipe
from vitkit.weights.native import save_weights

log = logging.getLogger("vitkit")
CALIBRATION_STEPS = (5, 25)  # time steps 5..24 to size an epoch under --time-budget
NO_FLIP = {"digits", "mnist"}  # a mirrored digit is another (or no) digit
PLOT_EVERY_S = 10  # curves.png: after every epoch, but at most this often (a plot costs ~0.2 s)


class TrainingError(Exception):
    """Training cannot go on (bad numbers, bad data with --strict); the message says what to do."""


def bf16_supported(device: torch.device) -> bool:
    """On CPU, bf16 pays only with AMX or AVX512-BF16, and (measured) only for models of width
    >= 128: a width-64 model trains at 3300 img/s in fp32 but 1600 img/s under bf16 autocast."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Norms, biases, the position embedding and the class token are not decayed."""
    return param.ndim <= 1 or name in ("pos_embed", "cls_token")


def layer_id(name: str, depth: int) -> int:
    if name.startswith(("patch_embed", "cls_token", "pos_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: ViT, recipe: Recipe) -> list[dict]:
    """AdamW groups: decay or not, and with --layer-decay a smaller lr for earlier layers."""
    depth, groups = model.config.depth, {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lid = layer_id(name, depth)
        scale = recipe.layer_decay ** (depth + 1 - lid) if recipe.layer_decay else 1.0
        decay = 0.0 if no_weight_decay(name, param) else recipe.weight_decay
        key = (scale, decay)
        groups.setdefault(key, {"params": [], "weight_decay": decay, "lr_scale": scale})
        groups[key]["params"].append(param)
    return list(groups.values())


class Schedule:
    """Linear warm-up then cosine decay to min_lr; the total may be set late (time budgets)."""

    def __init__(self, base_lr: float, min_lr: float, warmup: int, total: int | None):
        self.base_lr, self.min_lr, self.warmup, self.total = base_lr, min_lr, warmup, total

    def lr(self, step: int) -> float:
        if step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        if self.total is None:
            return self.base_lr
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))


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


@dataclasses.dataclass
class RunPaths:
    root: Path

    def __post_init__(self):
        self.root = Path(self.root)
        self.checkpoint = self.root / "checkpoint.pt"
        self.metrics = self.root / "metrics.jsonl"
        self.curves = self.root / "curves.png"
        self.log = self.root / "train.log"


def default_out(data_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{data_name.replace(':', '-').replace('/', '_')}-{stamp}"


def train(data: str = "digits", recipe: Recipe | None = None, given: set[str] | None = None,
          out: str | Path | None = None, resume: str | Path | None = None, strict: bool = False,
          device: str | None = None, progress: bool | None = None) -> dict:
    """Train (or resume) and return the final metrics. `given` names the recipe fields the user
    set; the rest are chosen for the data set by `auto_recipe`."""
    recipe = recipe or Recipe()
    given = given or set()
    rank, world, dev = distributed.setup(device)
    if rank:
        log.setLevel(logging.WARNING)  # one process speaks
    started = time.time()
    saved = None
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    if resume is None and restarted and out and RunPaths(out).checkpoint.exists():
        resume = out  # torchrun restarted the workers after a failure: continue from the checkpoint
        log.info("restart %s: resuming %s", os.environ["TORCHELASTIC_RESTART_COUNT"], out)
    if resume:
        saved = checkpoint.load(RunPaths(resume).checkpoint)
        _check_resume(saved, recipe, given)
        # the run's own recipe; only how it is spread over processes may change on resume
        recipe = Recipe(**{**saved["recipe"], **({"fsdp": recipe.fsdp} if "fsdp" in given else {})})
        data = saved["data"]
    splits = data_spec.load(data, val_split=recipe.val_split, seed=recipe.seed)
    _check_data(splits, strict)
    if saved:
        config = ViTConfig.from_dict(saved["model_config"])
    else:
        flip_ok = splits.name not in NO_FLIP and splits.channels == 3
        recipe, config = auto_recipe(recipe, given, splits.image_size, splits.channels,
                                     len(splits.classes), len(splits.train), flip_ok)
    paths = RunPaths(resume or out or distributed.broadcast(default_out(splits.name)))
    if restarted and not out and not resume:
        log.warning("torchrun restarted the workers but this run has no --out: starting a new run in %s; "
                    "pass --out DIR so that a restart resumes from DIR's checkpoint", paths.root)
    paths.root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)

    sharded = recipe.fsdp and world > 1
    model = _build_model(config, recipe)  # on the CPU: with FSDP only each process's shard moves to dev
    model = model if sharded else model.to(dev)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema), use_buffers=True) \
        if recipe.ema else None
    if sharded:  # the optimizer must see the sharded parameters, so this comes first
        distributed.fully_shard_model(model, dev)
        if ema is not None:
            distributed.fully_shard_model(ema.module, dev)
    bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and bf16_supported(dev)
                                          and (dev.type == "cuda" or config.dim >= 128))
    feed = data_pipeline(splits, recipe, config, rank, world)
    recipe, loader, sampler, geometry, mixer = feed.recipe, feed.loader, feed.sampler, feed.geometry, feed.mixer
    steps_per_epoch = sampler.batches_per_epoch()

    optimizer = torch.optim.AdamW(param_groups(model, recipe), lr=recipe.lr, betas=(0.9, 0.999),
                                  fused=dev.type != "cpu")
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    epochs = recipe.epochs
    schedule = Schedule(recipe.lr, recipe.min_lr, warmup, epochs * steps_per_epoch if epochs else None)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    forward = DistributedDataParallel(model) if world > 1 and not sharded else model
    forward = torch.compile(forward) if recipe.compile else forward

    history, start_epoch, skip, global_step, nonfinite, progress = [], 0, 0, 0, 0, None
    skipped_files = dict(splits.skipped)
    if saved:
        checkpoint.restore_training(RunPaths(resume).checkpoint, saved, model, optimizer, ema)
        history, start_epoch, skip = saved["history"], saved["epoch"], saved["step_in_epoch"]
        progress = saved.get("epoch_progress") if rank == 0 else None  # one process carries the totals
        global_step, nonfinite, epochs = saved["global_step"], saved["nonfinite"], saved["epochs"]
        schedule.total = epochs * steps_per_epoch
        skipped_files.update(saved.get("skipped_files", {}))
        checkpoint.set_rng_state(saved["rng"])
        log.info("resuming %s at epoch %d, step %d", paths.root, start_epoch + 1, skip)

    meta = {"classes": splits.classes, "normalize": "half", "data": data, "recipe": recipe.to_dict()}

    def save_checkpoint(epoch: int, step_in_epoch: int, epoch_progress: dict | None = None) -> None:
        checkpoint.save_training(paths.checkpoint, model, optimizer, ema, {
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step, "epochs": epochs,
            "history": history, "nonfinite": nonfinite, "data": data, "recipe": recipe.to_dict(),
            "model_config": config.to_dict(), "classes": splits.classes,
            "skipped_files": skipped_files, "epoch_progress": epoch_progress}, global_step, sharded, rank)

    last_plot = 0.0

    def publish(final: bool) -> None:
        """The run's user-facing files, from the state the checkpoint holds."""
        nonlocal last_plot
        weights = checkpoint.full_model_state(ema.module if ema is not None else model)  # all processes
        if rank:
            return
        save_weights(weights, config, paths.root, meta)
        atomic.write_text(paths.metrics, "".join(json.dumps(h) + "\n" for h in history))
        if final or time.time() - last_plot > PLOT_EVERY_S:
            plots.curves(history, paths.curves)
            last_plot = time.time()

    log.info("model: %s parameters, %s", f"{model.num_parameters():,}", json.dumps(config.to_dict()))
    log.info("data: %s (%d train, %d validation images, %d classes), batch %d, %s, %d workers, %d process%s",
             splits.name, len(splits.train), len(splits.val), len(splits.classes), recipe.batch_size,
             "bf16" if bf16 else "fp32", feed.workers, world, "es" if world > 1 else "")
    show_bar = sys.stderr.isatty() if progress is None else progress
    step_times: list[float] = []
    epoch = start_epoch
    with StopFlag() as stop:
        while epochs is None or epoch < epochs:
            sampler.set_epoch(epoch, skip)
            model.train()
            # a run stopped mid-epoch carries on the epoch's sums, so its metrics cover the whole epoch
            progress = progress or {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "load_wait": 0.0}
            loss_sum, correct, seen, load_wait = (progress[k] for k in ("loss_sum", "correct", "seen", "load_wait"))
            epoch_start, progress = time.time() - progress["seconds"], None
            bar = tqdm(total=steps_per_epoch, initial=skip, disable=not show_bar, leave=False,
                       desc=f"epoch {epoch + 1}" + (f"/{epochs}" if epochs else ""), file=sys.stderr)
            step = skip
            tick = time.time()
            for images, labels, problems in loader:
                load_wait += time.time() - tick
                _inject_fault(rank, epoch, step)
                if distributed.any_true(stop.requested):
                    total_loss, total_correct, total_seen = _all_processes(loss_sum, correct, seen)
                    save_checkpoint(epoch, step, {"loss_sum": total_loss, "correct": total_correct, "seen": total_seen,
                                                  "seconds": time.time() - epoch_start, "load_wait": load_wait})
                    raise KeyboardInterrupt(f"checkpoint saved at epoch {epoch + 1}, step {step}; continue "
                                            f"with: vitkit train --resume {paths.root}")
                for name, reason in problems:
                    if strict:
                        raise TrainingError(f"cannot read {name}: {reason} (--strict)")
                    skipped_files[name] = reason
                t0 = time.time()
                if len(labels):
                    loss, hits = _step(forward, model, optimizer, schedule, criterion, geometry, mixer,
                                       images, labels, recipe, dev, bf16, global_step, epoch, step, rank, world)
                    if loss is None:
                        nonfinite += 1
                    else:
                        loss_sum += loss * len(labels)
                        correct += hits
                        seen += len(labels)
                    if ema is not None:
                        ema.update_parameters(model)
                global_step += 1
                step += 1
                step_times.append(time.time() - t0)
                if epochs is None and len(step_times) == CALIBRATION_STEPS[1]:
                    epochs = distributed.broadcast(_epochs_for_budget(recipe, started, step_times,
                                                                      steps_per_epoch, len(splits.val)))
                    schedule.total = epochs * steps_per_epoch
                bar.update(1)
                if seen:
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{seen / (time.time() - epoch_start):.0f}")
                tick = time.time()
            bar.close()
            train_seconds = time.time() - epoch_start
            loss_sum, correct, seen = _all_processes(loss_sum, correct, seen)
            if epochs is None:  # epoch shorter than the calibration: size from the whole epoch
                epochs = distributed.broadcast(
                    _epochs_for_budget(recipe, started, step_times, steps_per_epoch, len(splits.val)))
                schedule.total = epochs * steps_per_epoch
            eval_model = ema.module if ema is not None else model
            val = evaluate(eval_model, feed.val_loader, len(splits.classes), dev, bf16)
            for name, reason in val["skipped"]:
                skipped_files[name] = reason
            record = {
                "epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                "train_top1": correct / seen if seen and mixer is None else None,
                "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                "lr": schedule.lr(global_step - 1), "img_per_s": seen / max(train_seconds, 1e-9),
                "loader_wait_s": load_wait, "seconds": time.time() - epoch_start,
                "elapsed": time.time() - started, "nonfinite_steps": nonfinite,
            }
            history.append(record)
            if recipe.time_budget and recipe.epochs is None and len(history) == 1 and not saved:  # re-plan
                epochs = distributed.broadcast(
                    max(1, 1 + int((recipe.time_budget - record["elapsed"]) * 0.98 / record["seconds"])))
                schedule.total = epochs * steps_per_epoch
            epoch += 1
            skip = 0
            save_checkpoint(epoch, 0)
            publish(final=epoch == epochs)
            _log_epoch(record, epochs, load_wait, train_seconds)
    if start_epoch == epochs:  # resumed after the last checkpoint: its outputs may not have been written
        publish(final=True)
    result = {"run": str(paths.root), "epochs": epochs, "seconds": time.time() - started,
              "val_top1": history[-1]["val_top1"], "val_loss": history[-1]["val_loss"],
              "nonfinite_steps": nonfinite, "skipped_files": len(skipped_files)}
    if splits.test is not None and splits.test is not splits.val:
        test = evaluate(ema.module if ema is not None else model,
                        eval_loader(splits.test, feed.eval_tf, 256, feed.workers, shard(len(splits.test), rank, world)),
                        len(splits.classes), dev, bf16)
        result["test_top1"] = test["top1"]
    elif splits.test is not None:
        result["test_top1"] = history[-1]["val_top1"]
    if not rank:
        _write_log(paths, skipped_files, result)
    distributed.barrier()
    return result


@dataclasses.dataclass
class Pipeline:
    """What feeds the model: the loaders (per-image work in worker processes), the batch-level
    augmentations run in the training step, and the recipe (its batch clamped to the data)."""
    recipe: Recipe
    loader: DataLoader
    sampler: EpochSampler
    val_loader: DataLoader
    eval_tf: Callable | None
    geometry: transforms.GeometricAugment
    mixer: Callable | None
    workers: int


def data_pipeline(splits: data_spec.DataSplits, recipe: Recipe, config: ViTConfig, rank: int = 0,
                  world: int = 1) -> Pipeline:
    """The training and validation loaders for `splits` at the model's image size."""
    size = config.image_hw
    if isinstance(splits.train, ArrayImages):
        splits.train, splits.val = splits.train.resized(size), splits.val.resized(size)
        splits.test = splits.test.resized(size) if splits.test is not None else None
    train_tf = transforms.train_transform(size, crop=recipe.crop, min_scale=recipe.min_scale,
                                          augment=recipe.augment, magnitude=recipe.magnitude,
                                          erasing=recipe.erasing)
    geometry = transforms.GeometricAugment(recipe.padding if recipe.crop == "pad" else 0, recipe.flip,
                                           recipe.rotate, recipe.translate, recipe.scale_jitter)
    eval_tf = transforms.eval_transform(size)
    per_image_work = isinstance(splits.train, FileImages) or recipe.crop == "random-resized" \
        or recipe.augment != "none" or recipe.erasing > 0
    if not per_image_work:  # arrays already at the model's size: fetched a batch at a time
        train_tf = eval_tf = None
    workers = recipe.workers if recipe.workers is not None else default_workers() if per_image_work else 0
    if len(splits.train) < recipe.batch_size:
        recipe = dataclasses.replace(recipe, batch_size=max(1, len(splits.train)))
    if recipe.batch_size % world:
        raise ValueError(f"--batch-size {recipe.batch_size} is the global batch and must divide among "
                         f"{world} processes; use a multiple of {world}")
    loader, sampler = train_loader(splits.train, train_tf, recipe.batch_size, recipe.seed, workers, rank, world)
    val_loader = eval_loader(splits.val, eval_tf, 256, workers, shard(len(splits.val), rank, world))
    mixer = transforms.mix(len(splits.classes), recipe.mixup, recipe.cutmix)
    return Pipeline(recipe, loader, sampler, val_loader, eval_tf, geometry, mixer, workers)


def _all_processes(loss_sum: float, correct: int, seen: int) -> tuple[float, int, int]:
    """An epoch's (loss sum, correct, seen), added up over the processes."""
    total = distributed.all_sum(torch.tensor([loss_sum, correct, seen], dtype=torch.float64)).tolist()
    return total[0], int(total[1]), int(total[2])


def shard(size: int, rank: int, world: int) -> list[int] | None:
    """This process's share of an evaluation set: every image exactly once across processes."""
    return list(range(rank, size, world)) if world > 1 else None


def _step(forward, model, optimizer, schedule, criterion, geometry, mixer, images, labels, recipe, dev, bf16,
          global_step, epoch, step, rank=0, world=1) -> tuple[float | None, int]:
    """One optimizer step (split into --accum-steps pieces). Returns (loss, correct) or (None, 0)
    when the loss was not finite and --skip-nonfinite dropped the step."""
    torch.manual_seed(mix_seed(recipe.seed, epoch, step, 1))  # dropout, drop-path, MixUp/CutMix
    images, labels = images.to(dev, non_blocking=True).float() / 255.0, labels.to(dev, non_blocking=True)
    if geometry.active:
        per_rank = recipe.batch_size // world
        images = geometry(images, torch.Generator().manual_seed(mix_seed(recipe.seed, epoch, step, 2)),
                          start=rank * per_rank, total=recipe.batch_size)
    images = transforms.to_model_input(images)
    targets = labels
    if mixer is not None:
        images, targets = mixer(images, labels)
    for group in optimizer.param_groups:
        group["lr"] = schedule.lr(global_step) * group["lr_scale"]
    pieces = max(1, min(recipe.accum_steps, len(labels)))
    total_loss, hits = 0.0, 0
    chunks = list(zip(images.chunk(pieces), targets.chunk(pieces), labels.chunk(pieces), strict=True))
    for i, (x, t, y) in enumerate(chunks):
        with autocast(dev, bf16), training_attention(dev), _gradient_sync(forward, model, i == len(chunks) - 1):
            logits = forward(x)
            loss = criterion(logits.float(), t) * (len(y) / len(labels))
        if distributed.any_true(not torch.isfinite(loss).item()):  # every process skips, or none
            optimizer.zero_grad(set_to_none=True)
            if recipe.skip_nonfinite:
                return None, 0
            raise TrainingError(
                f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; stopped, the last "
                f"good checkpoint is kept. Likely fixes: a lower --lr (now {recipe.lr}), "
                "--precision fp32, a smaller --clip-grad, or --skip-nonfinite to drop such steps")
        loss.backward()
        total_loss += loss.item()
        hits += (logits.argmax(1) == y).sum().item()
    if recipe.clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total_loss, hits


def _gradient_sync(forward: nn.Module, model: nn.Module, on: bool):
    """Accumulation pieces before the last keep their gradients local: one all-reduce (DDP) or
    reduce-scatter (FSDP) per optimizer step instead of one per piece. DDP decides in forward."""
    if distributed.is_sharded(model):
        model.set_requires_gradient_sync(on)
    elif isinstance(forward, DistributedDataParallel) and not on:
        return forward.no_sync()
    return nullcontext()


def _inject_fault(rank: int, epoch: int, step: int) -> None:
    """Fault injection for the fault-tolerance tests: VITKIT_KILL_AT="RANK:EPOCH:STEP[:SIGNAL]"
    sends that process SIGNAL (default KILL: a crashed machine; TERM: a scheduler's stop) at that
    step (epoch counted from 1) of the first attempt only."""
    spec = os.environ.get("VITKIT_KILL_AT")
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    parts = spec.split(":")
    name = parts.pop() if len(parts) == 4 else "KILL"
    if [int(v) for v in parts] == [rank, epoch + 1, step]:
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


def _epochs_for_budget(recipe: Recipe, started: float, step_times: list[float], steps_per_epoch: int,
                       val_images: int) -> int:
    """How many whole epochs fit in what is left of --time-budget, from measured step times."""
    lo, hi = CALIBRATION_STEPS
    sample = step_times[lo:hi] if len(step_times) >= hi else step_times[len(step_times) // 3:] or step_times
    sample = sorted(sample)
    step_time = sample[len(sample) // 2]
    per_image = step_time / recipe.batch_size
    epoch_time = steps_per_epoch * step_time * 1.03 + val_images * per_image / 2.5 + 0.5
    remaining = recipe.time_budget - (time.time() - started) + len(step_times) * step_time
    epochs = max(1, int(remaining * 0.97 / epoch_time))
    log.info("time budget %.0f s: %.3f s/step -> %d epochs of %.0f s", recipe.time_budget, step_time,
             epochs, epoch_time)
    return epochs


def _build_model(config: ViTConfig, recipe: Recipe) -> ViT:
    if not recipe.init:
        return ViT(config)
    from vitkit.weights import load

    model = load(recipe.init, image_size=config.image_size, num_classes=config.num_classes,
                 drop_path=config.drop_path, dropout=config.dropout)
    if recipe.freeze_backbone:  # linear probe: only the head learns
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("head.")
    return model


def _check_resume(saved: dict, recipe: Recipe, given: set[str]) -> None:
    if "model" in given and recipe.model != saved["recipe"].get("model"):
        raise ValueError(f"--resume: the run was trained with --model {saved['recipe'].get('model')}, "
                         f"not {recipe.model}; drop --model or start a new run")


def _check_data(splits, strict: bool) -> None:
    if splits.train is None or not len(splits.train):
        raise ValueError(f"data set {splits.name!r} has no training images")
    if len(splits.classes) < 2:
        raise ValueError(f"data set {splits.name!r} has only {len(splits.classes)} class "
                         f"({splits.classes}); a classifier needs at least two class folders")
    if strict and splits.skipped:
        name, reason = splits.skipped[0]
        raise TrainingError(f"cannot read {name}: {reason} (--strict)")


def _log_epoch(record: dict, epochs: int, load_wait: float, seconds: float) -> None:
    log.info("epoch %d/%d  train loss %.4f  val loss %.4f  val top-1 %.2f%%  lr %.2e  %.0f img/s  %.1f s",
                record["epoch"], epochs, record["train_loss"], record["val_loss"],
                100 * record["val_top1"], record["lr"], record["img_per_s"], record["seconds"])
    model_rate = record["img_per_s"] * seconds / max(seconds - load_wait, 1e-9)
    log.debug("  model %.0f img/s while computing; waited %.2f s of %.1f s for data", model_rate,
             load_wait, seconds)


def _write_log(paths: RunPaths, skipped: dict[str, str], result: dict) -> None:
    lines = [f"result: {json.dumps(result)}", f"skipped files: {len(skipped)}"]
    lines += [f"  {name}: {reason}" for name, reason in sorted(skipped.items())]
    atomic.write_text(paths.log, "\n".join(lines) + "\n")
    if skipped:
        log.warning("skipped %d unreadable file(s); see %s", len(skipped), paths.log)

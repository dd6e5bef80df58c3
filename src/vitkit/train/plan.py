"""Planning a run: from what the user asked for and what the data is, to everything the run does.

`plan` is the one place where a recipe is decided: the defaults chosen for the data (recipe.py),
the fine-tuning recipe for --init, a resumed run's own recipe with only how it computes changed,
and the batch size clamped to the data. It reads no file and changes nothing it is given: the
caller opens the data, the --init weights and the checkpoint first (`train.trainer.train`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

from vitkit.data.datasets import ArrayImages
from vitkit.data.loader import default_workers
from vitkit.data.shards import ShardSplit
from vitkit.data.spec import DataSplits, hold_out
from vitkit.model import flexi
from vitkit.model.build import config_from_dict
from vitkit.model.cnn import CNNConfig
from vitkit.model.config import ViTConfig
from vitkit.model.normalization import HALF, Normalization
from vitkit.train.recipe import Recipe, auto_recipe, fine_tune_recipe, regularisers

log = logging.getLogger("vitkit")
NO_FLIP = {"digits", "mnist"}  # a mirrored digit is another (or no) digit; Fashion-MNIST flips: a garment stays one
# How, not what, a run computes: flags a resumed run may change
CHANGEABLE_ON_RESUME = {"workers", "compile", "fsdp", "grad_checkpointing", "tensorboard"}


class TrainingError(Exception):
    """Training cannot go on (bad numbers, bad data with --strict); the message says what to do."""


@dataclass(frozen=True)
class Plan:
    """Everything decided before the first step."""

    data: str  # the data spec, as the run records it
    splits: DataSplits  # in-memory images already at the model's input size
    recipe: Recipe  # every field decided
    config: ViTConfig | CNNConfig  # the model to build
    normalization: Normalization
    steps_per_epoch: int
    init_commit: str | None = None  # the Hub commit the --init weights came from (the run records it)
    teacher_commit: str | None = None  # a resumed run's: the Hub commit its --teacher came from

    @property
    def steps(self) -> int | None:
        """The run's optimizer steps when its epochs are fixed; a time budget plans them as it runs."""
        return self.recipe.epochs * self.steps_per_epoch if self.recipe.epochs else None


def plan(data: str, splits: DataSplits, recipe: Recipe, given: set[str], init: nn.Module | None = None,
         resume: dict[str, Any] | None = None, processes: int = 1, strict: bool = False) -> Plan:
    """The run's plan. `splits`: the data as `data_spec.read` opened it; `given`: the recipe fields
    the user set (the rest are chosen for the data); `init`: the --init weights, loaded; `resume`:
    a checkpoint (with its run folder under "run"), whose own recipe, model and normalization the
    run keeps."""
    if resume:
        recipe = resumed_recipe(resume, recipe, given)
    splits = hold_out(splits, recipe.val_split, recipe.seed)
    check_data(splits, strict)
    flip_ok = splits.name not in NO_FLIP
    if resume:
        config, normalization = config_from_dict(resume["model_config"]), Normalization.parse(resume["normalize"])
    elif init is not None:
        recipe = fine_tune_recipe(recipe, given, max(init.config.image_hw), len(splits.train), flip_ok)
        config = init.config.replace(**regularisers(recipe)) if isinstance(init.config, ViTConfig) else init.config
        normalization = Normalization.parse(recipe.normalize or init.normalization or HALF)
    else:
        recipe, config = auto_recipe(recipe, given, splits.image_size, splits.channels, len(splits.classes),
                                     len(splits.train), flip_ok)
        normalization = Normalization.parse(recipe.normalize or HALF)
        if recipe.teacher and isinstance(config, ViTConfig):  # DeiT: a distillation token and head
            config = config.replace(distilled=True, class_token=True, pool="cls")
    check_teacher(recipe, config)
    config = flexi_config(recipe, config)
    recipe, config = naflex_plan(recipe, given, config)
    recipe = batch_for(recipe, len(splits.train), processes)
    if isinstance(splits.train, ShardSplit):
        recipe, steps = stream_epoch(recipe, splits.train, processes)
        if resume and (resume.get("processes", processes), resume["recipe"].get("workers")) != (processes,
                                                                                             recipe.workers):
            raise ValueError(f"this run reads shards in ranges cut for {resume.get('processes')} process(es) and "
                             f"{resume['recipe'].get('workers')} loader worker(s) each; resume it with the same "
                             "(--nproc, --workers)")
    else:
        steps = len(splits.train) // recipe.batch_size
    commit = resume.get("init_commit") if resume else getattr(init, "revision", None)
    return Plan(data, at_size(splits, config.image_hw), recipe, config, normalization, steps, commit,
                resume.get("teacher_commit") if resume else None)


def check_teacher(recipe: Recipe, config: ViTConfig | CNNConfig) -> None:
    if recipe.teacher and not getattr(config, "distilled", False):
        raise ValueError("--teacher needs a student with a distillation token: --init weights of a distilled "
                         "model (deit_*_distilled), or no --init")


def stream_epoch(recipe: Recipe, train: ShardSplit, processes: int) -> tuple[Recipe, int]:
    """A stream's steps per epoch: equal ranges of its samples for every (process, worker), in
    whole batches, so the loader's workers are part of the plan (and of the recipe it records)."""
    if recipe.max_tokens:
        raise ValueError("--max-tokens reads images by index, and wds: shards are read in sequence: train on the "
                         "data the shards were written from, or drop --max-tokens")
    workers = recipe.workers if recipe.workers is not None else default_workers()
    steps = train.steps_per_epoch(recipe.batch_size // processes, processes, workers)
    if not steps:
        raise ValueError(f"{len(train)} training samples are fewer than one batch of {recipe.batch_size // processes} "
                         f"for each of {processes} process(es) x {max(workers, 1)} loader worker(s); use a smaller "
                         "--batch-size or fewer --workers")
    left = len(train) - steps * recipe.batch_size
    log.info("%d training samples an epoch in shards: %d steps of %d; %d left over at each epoch's end (the "
             "remainder of equal ranges per process and worker)", len(train), steps, recipe.batch_size, left)
    return dataclasses.replace(recipe, workers=workers), steps


def flexi_config(recipe: Recipe, config: ViTConfig | CNNConfig) -> ViTConfig | CNNConfig:
    """--flexi-patch needs the one kernel FlexiViT resizes, a 'conv' patch embedding (it replaces the
    small-image default's convolutional stem unless --model-option patch_embed names one), and patch
    sizes that divide the image."""
    if not recipe.flexi_sizes:
        return config
    if not isinstance(config, ViTConfig):
        raise ValueError("--flexi-patch trains a ViT at several patch sizes; a CNN has none")
    if config.patch_embed == "conv-stem" and "patch_embed" not in recipe.model_overrides:
        config = config.replace(patch_embed="conv", stem_depth=1, stem_channels=None)
    for size in recipe.flexi_sizes:
        flexi.check_patch_size(config, size)
    return config


def naflex_plan(recipe: Recipe, given: set[str], config: ViTConfig | CNNConfig) -> tuple[Recipe, ViTConfig | CNNConfig]:
    """--max-tokens: images of their own shapes, so no MixUp/CutMix (they mix images of one size), no
    teacher, no torch.compile unless asked (every shape would compile anew), and a patch embedding
    that takes patch sequences ('conv' replaces the small-image default's convolutional stem)."""
    if not recipe.max_tokens:
        return recipe, config
    if not isinstance(config, ViTConfig):
        raise ValueError("--max-tokens feeds a ViT sequences of patches; a CNN takes images: drop --max-tokens")
    refused = [f for f in ("mixup", "cutmix", "teacher", "flexi_patch") if getattr(recipe, f) and f in given]
    if refused or recipe.teacher:
        flag = "--" + (refused or ["teacher"])[0].replace("_", "-")
        raise ValueError(f"{flag} does not work with --max-tokens (each image has its own shape); drop one of them")
    if recipe.min_tokens and recipe.min_tokens > recipe.max_tokens:
        raise ValueError(f"--min-tokens {recipe.min_tokens} is above --max-tokens {recipe.max_tokens}")
    recipe = dataclasses.replace(recipe, mixup=0.0, cutmix=0.0, flexi_patch=None,
                                 compile=recipe.compile and "compile" in given)
    if config.patch_embed == "conv-stem" and "patch_embed" not in recipe.model_overrides:
        config = config.replace(patch_embed="conv", stem_depth=1, stem_channels=None)
    if config.patch_embed not in ("conv", "linear-ln") or config.window_size or config.rel_pos or config.neck_dim:
        raise ValueError("--max-tokens needs a model that takes patch sequences: patch_embed 'conv' or 'linear-ln', "
                         "no windows, relative positions or neck")
    return recipe, config.replace(dynamic_size=True)


def batch_for(recipe: Recipe, images: int, processes: int) -> Recipe:
    """The global batch, at most the training set, divided among the processes."""
    if images < recipe.batch_size:
        recipe = dataclasses.replace(recipe, batch_size=max(1, images))
    if recipe.batch_size % processes:
        raise ValueError(f"--batch-size {recipe.batch_size} is the global batch and must divide among "
                         f"{processes} processes; use a multiple of {processes}")
    return recipe


def at_size(splits: DataSplits, size: tuple[int, int]) -> DataSplits:
    """In-memory images resized once, up front, to the model's input size (files are resized as
    they are decoded)."""
    if not isinstance(splits.train, ArrayImages):
        return splits
    resized = {name: getattr(splits, name).resized(size) for name in ("train", "val", "test")
               if getattr(splits, name) is not None}
    return dataclasses.replace(splits, **resized)


def resumed_recipe(saved: dict[str, Any], recipe: Recipe, given: set[str]) -> Recipe:
    """The run's own recipe, with only how it computes changed (CHANGEABLE_ON_RESUME: --workers,
    --compile, --fsdp, ...); a flag that would change what the run computes is refused (the same
    value is fine: torchrun's restarts and a re-run command repeat the original flags)."""
    refused = sorted(k for k in given - CHANGEABLE_ON_RESUME if getattr(recipe, k) != saved["recipe"].get(k))
    if refused:
        flag = "--" + refused[0].replace("_", "-")
        raise ValueError(f"{flag} cannot change when resuming (the run keeps its recipe: "
                         f"{flag} {saved['recipe'].get(refused[0])}); drop {flag}, or start a new run "
                         f"with --init {saved['run']} to train further with other settings")
    return Recipe(**{**saved["recipe"], **{k: getattr(recipe, k) for k in given}})


def check_data(splits: DataSplits, strict: bool) -> None:
    if splits.train is None or not len(splits.train):
        raise ValueError(f"data set {splits.name!r} has no training images")
    if len(splits.classes) < 2:
        raise ValueError(f"data set {splits.name!r} has only {len(splits.classes)} class "
                         f"({splits.classes}); a classifier needs at least two class folders")
    if strict and splits.skipped:
        name, reason = splits.skipped[0]
        raise TrainingError(f"cannot read {name}: {reason} (--strict)")

"""What feeds the model: the loaders, and the batch-level work done on the training device.

Per image, in the loader (worker processes when there is per-image work): decoding, bringing each
image to the model's size, RandomResizedCrop, RandAugment, erasing. Per batch, on the device:
crop-with-padding, flips and affine warps (one `grid_sample`), normalisation, MixUp/CutMix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from vitkit.data import transforms
from vitkit.data.datasets import FileImages
from vitkit.data.hf import HFImages
from vitkit.data.loader import ArrayBatches, EpochSampler, default_workers, eval_loader, mix_seed, train_loader
from vitkit.data.shards import ShardSplit, ShardStream
from vitkit.distributed import World
from vitkit.model.config import ViTConfig
from vitkit.model.normalization import Normalization
from vitkit.train.plan import Plan
from vitkit.train.recipe import Recipe

EVAL_BATCH = 256


@dataclasses.dataclass
class Batch:
    """One process's share of a global batch, ready for the model. `weights` is 0 for a stand-in
    image (a process whose images all failed to decode still takes part in the step)."""

    images: torch.Tensor  # normalised, for the model
    pixels: torch.Tensor  # the same images in [0, 1], for a teacher with its own normalization
    targets: torch.Tensor  # class indices, or class probabilities after MixUp/CutMix
    labels: torch.Tensor
    weights: torch.Tensor


@dataclasses.dataclass
class Feed:
    recipe: Recipe
    loader: DataLoader | ArrayBatches
    sampler: EpochSampler | ShardStream  # set_epoch(epoch, steps done) before each epoch
    eval_tf: Callable | None
    geometry: transforms.GeometricAugment
    mixer: Callable | None
    workers: int
    config: ViTConfig
    normalization: Normalization
    world: World

    def prepare(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int) -> Batch:
        """uint8 images -> augmented, normalised float images (and mixed targets) on the device.
        Crop, flip and warp parameters are drawn for the whole global batch, so every image is
        augmented as it would be in one process."""
        dev, recipe = self.world.device, self.recipe
        weights = torch.ones(len(labels), device=dev)
        if not len(labels):
            images = torch.zeros(1, self.config.in_channels, *self.config.image_hw, dtype=torch.uint8)
            labels, weights = torch.zeros(1, dtype=torch.long), torch.zeros(1, device=dev)
        x = images.to(dev, non_blocking=True).float() / 255.0
        labels = labels.to(dev, non_blocking=True)
        if self.geometry.active:
            per_rank = recipe.batch_size // self.world.size
            g = torch.Generator().manual_seed(mix_seed(recipe.seed, epoch, step, 2))
            x = self.geometry(x, g, start=self.world.rank * per_rank, total=recipe.batch_size)
        targets = labels
        if self.mixer is not None:  # on [0, 1] pixels: mixing commutes with the normalization
            x, targets = self.mixer(x, labels)
        return Batch(self.normalization(x, self.config.in_channels), x, targets, labels, weights)

    def held_out(self, images: Dataset) -> DataLoader:
        """Every image of a held-out split once, each process its share."""
        return eval_loader(images, self.eval_tf, EVAL_BATCH, self.workers, self.world.shard(len(images)),
                           self.world.rank, self.world.size)


def build_feed(plan: Plan, world: World) -> Feed:
    """The training loader and the batch-level work for the plan's data at the model's image size."""
    recipe, splits, size = plan.recipe, plan.splits, plan.config.image_hw
    train_tf = transforms.train_transform(size, crop=recipe.crop, min_scale=recipe.min_scale,
                                          augment=recipe.augment, magnitude=recipe.magnitude,
                                          erasing=recipe.erasing)
    geometry = transforms.GeometricAugment(recipe.padding if recipe.crop == "pad" else 0, recipe.flip,
                                           recipe.rotate, recipe.translate, recipe.scale_jitter)
    eval_tf = transforms.eval_transform(size)
    per_image_work = isinstance(splits.train, FileImages | HFImages | ShardSplit) or recipe.crop == "random-resized" \
        or recipe.augment != "none" or recipe.erasing > 0
    if not per_image_work:  # arrays already at the model's size: fetched a batch at a time
        train_tf = eval_tf = None
    workers = recipe.workers if recipe.workers is not None else default_workers() if per_image_work else 0
    if isinstance(splits.train, ShardSplit):  # read in each epoch's ranges; the stream is its own sampler
        sampler = ShardStream(splits.train, train_tf, recipe.batch_size // world.size, recipe.seed, world.rank,
                              world.size, workers)
        loader = DataLoader(sampler, batch_size=None, num_workers=workers, pin_memory=world.device.type == "cuda")
    elif per_image_work:
        loader, sampler = train_loader(splits.train, train_tf, recipe.batch_size, recipe.seed, workers,
                                       world.rank, world.size, pin_memory=world.device.type == "cuda")
    else:
        sampler = EpochSampler(len(splits.train), recipe.batch_size, recipe.seed, world.rank, world.size)
        loader = ArrayBatches(splits.train, sampler, world.device)
    mixer = transforms.mix(len(splits.classes), recipe.mixup, recipe.cutmix)
    return Feed(recipe, loader, sampler, eval_tf, geometry, mixer, workers, plan.config,
                plan.normalization, world)

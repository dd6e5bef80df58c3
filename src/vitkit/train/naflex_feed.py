"""The feed of a --max-tokens run (NaFlex): every image at its own aspect ratio, as a sequence of
its patches, never cropped.

Per image, in the loader: files are brought within the largest budget (`ToGrid`) and get their
per-image augmentations; in-memory arrays come a batch at a time at their own size. Per batch, on
the training device: the pad-crop, flips and warps (per image when the sizes differ), then a token
budget drawn for the batch from the seed and the step, between --min-tokens and --max-tokens, to
which every image of the batch is resized (so the model learns many resolutions, and a batch's
sequences are about equally long: little padding), then the patches, padded to the longest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from vitkit.data import naflex as naflex_data
from vitkit.data import transforms
from vitkit.data.datasets import ArrayImages
from vitkit.data.decode import BadImage
from vitkit.data.loader import ArrayBatches, EpochSampler, default_workers, eval_loader, mix_seed, train_loader
from vitkit.distributed import World
from vitkit.model import naflex
from vitkit.train.feed import EVAL_BATCH, Batch, Feed
from vitkit.train.plan import Plan
from vitkit.train.recipe import Recipe


def batch_budget(recipe: Recipe, epoch: int, step: int) -> int:
    """The token budget of this step's batch, drawn from the seed and the step (a resume draws the same)."""
    low = min(recipe.min_tokens or max(1, recipe.max_tokens // 4), recipe.max_tokens)
    return low + mix_seed(recipe.seed, epoch, step, 5) % (recipe.max_tokens - low + 1)


def to_grid(x: torch.Tensor, patch: tuple[int, int], budget: int) -> torch.Tensor:
    """Float images (B, C, H, W) of one size resized to their grid under `budget` (as they are if the
    budget would bend them out of shape)."""
    try:
        rows, cols = naflex_data.fit_grid(tuple(x.shape[-2:]), patch, budget)
    except BadImage:
        return x
    size = (rows * patch[0], cols * patch[1])
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


class NaFlexFeed(Feed):
    """`Feed` for images of their own shapes; batches are `naflex.Patches`."""

    def prepare(self, images: torch.Tensor | list[torch.Tensor], labels: torch.Tensor, epoch: int, step: int) -> Batch:
        dev, c = self.world.device, self.config
        weights = torch.ones(len(labels), device=dev)
        if not len(labels):  # a stand-in image: this process's images all failed to decode
            images = torch.zeros(1, c.in_channels, *c.patch_hw, dtype=torch.uint8)
            labels, weights = torch.zeros(1, dtype=torch.long), torch.zeros(1, device=dev)
        budget = batch_budget(self.recipe, epoch, step)
        pixels = self.warped(images, epoch, step)
        pixels = list(to_grid(pixels, c.patch_hw, budget)) if isinstance(pixels, torch.Tensor) else \
            [to_grid(p[None], c.patch_hw, budget)[0] for p in pixels]
        x = naflex.inputs(pixels, self.normalization, c.in_channels, c.patch_hw)
        labels = labels.to(dev, non_blocking=True)
        return Batch(x, None, labels, labels, weights)

    def warped(self, images: torch.Tensor | list[torch.Tensor], epoch: int, step: int
               ) -> torch.Tensor | list[torch.Tensor]:
        """Float [0, 1] images on the device after the pad-crop, flip and warp, drawn for the global
        batch: a (B, C, H, W) batch for images of one size, else a list."""
        dev, recipe = self.world.device, self.recipe
        start, total = self.world.rank * (recipe.batch_size // self.world.size), recipe.batch_size
        seed = mix_seed(recipe.seed, epoch, step, 2)
        if isinstance(images, torch.Tensor):  # one size: the batch at once
            x = images.to(dev, non_blocking=True).float() / 255.0
            if self.geometry.active:
                x = self.geometry(x, torch.Generator().manual_seed(seed), start=start, total=total)
            return x
        out = [x.to(dev, non_blocking=True).float() / 255.0 for x in images]
        if self.geometry.active:  # each image its own draw of the same global batch's
            out = [self.geometry(x[None], torch.Generator().manual_seed(seed), start=start + i, total=total)[0]
                   for i, x in enumerate(out)]
        return out

    def held_out(self, images: torch.utils.data.Dataset) -> torch.utils.data.DataLoader:
        """Every held-out image once, whole, within the largest budget."""
        return eval_loader(images, self.eval_tf, EVAL_BATCH, self.workers, self.world.shard(len(images)),
                           collate_fn=naflex_data.collate)


def build_naflex_feed(plan: Plan, world: World) -> NaFlexFeed:
    """The loader of a --max-tokens run: in-memory arrays a batch at a time, files one by one."""
    recipe, splits, patch = plan.recipe, plan.splits, plan.config.patch_hw
    geometry = transforms.GeometricAugment(recipe.padding if recipe.crop == "pad" else 0, recipe.flip,
                                           recipe.rotate, recipe.translate, recipe.scale_jitter)
    steps = transforms.augmentations(recipe.augment, recipe.magnitude, recipe.erasing)
    per_image = not isinstance(splits.train, ArrayImages) or bool(steps)  # files, Hugging Face rows
    workers = recipe.workers if recipe.workers is not None else default_workers()
    if per_image:
        tf = v2.Compose([naflex_data.ToGrid(patch, recipe.max_tokens), *steps])
        loader, sampler = train_loader(splits.train, tf, recipe.batch_size, recipe.seed, workers, world.rank,
                                       world.size, pin_memory=world.device.type == "cuda",
                                       collate_fn=naflex_data.collate)
    else:
        sampler = EpochSampler(len(splits.train), recipe.batch_size, recipe.seed, world.rank, world.size)
        loader = ArrayBatches(splits.train, sampler, world.device)
    return NaFlexFeed(recipe, loader, sampler, naflex_data.ToGrid(patch, recipe.max_tokens), geometry, None,
                      workers, plan.config, plan.normalization, world)

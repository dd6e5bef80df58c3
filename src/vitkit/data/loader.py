"""Data loaders whose every random choice is a function of (seed, epoch, position).

The training sampler yields `(index, augmentation_seed)` pairs; the worker seeds torch with that
number before transforming the image. So the same seed gives the same batches and the same
augmentations whichever worker handles them, and a run resumed mid-epoch continues exactly where
it stopped. With several processes (torchrun), each rank takes its own slice of the permutation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vitkit.data.datasets import ArrayImages, Sample, Transformed, collate
from vitkit.data.seeds import mix_seed
from vitkit.data.shards import ShardEval, ShardSplit

log = logging.getLogger("vitkit")


class EpochSampler(Sampler):
    """A fresh permutation each epoch, sliced for this rank, optionally skipping done batches."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world
        self.epoch, self.skip_batches = 0, 0

    def batches_per_epoch(self) -> int:
        return self.size // self.batch_size  # drop_last: every step sees a full global batch

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def batches(self, device: torch.device | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Each remaining batch's share for this rank: its position in the epoch's permutation
        (the per-sample seeds derive from it) and its indices, on `device` (copied once an epoch)."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=g).to(device)
        per_rank = self.batch_size // self.world
        for b in range(self.skip_batches, self.batches_per_epoch()):
            start = b * self.batch_size + self.rank * per_rank
            yield start, order[start:start + per_rank]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for start, indices in self.batches():
            for pos, index in enumerate(indices.tolist(), start):
                yield index, mix_seed(self.seed, self.epoch, pos)

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.skip_batches) * (self.batch_size // self.world)


class SeededTransform(Dataset):
    """Applies the transform under the sampler's per-sample seed."""

    def __init__(self, base: Dataset, transform: Callable[[torch.Tensor], torch.Tensor] | None):
        self.inner = Transformed(base, transform)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key: tuple[int, int] | int) -> Sample:
        index, seed = key if isinstance(key, tuple) else (key, key)
        if self.inner.transform is not None:
            torch.default_generator.manual_seed(seed)  # the CPU's alone: torch.manual_seed also queues CUDA's (~0.1 ms)
        return self.inner[index]


def default_workers() -> int:
    return min(2, os.cpu_count() or 1)


def train_loader(dataset: Dataset, transform: Callable | None, batch_size: int, seed: int, workers: int,
                 rank: int = 0, world: int = 1, pin_memory: bool = False,
                 collate_fn: Callable = collate) -> tuple[DataLoader, EpochSampler]:
    """`pin_memory` for a GPU: batches in page-locked memory copy to it without blocking the step.
    `collate_fn`: `naflex.collate` keeps images of different sizes as a list."""
    sampler = EpochSampler(len(dataset), batch_size, seed, rank, world)
    loader = DataLoader(SeededTransform(dataset, transform), batch_size=batch_size // world,
                        sampler=sampler, num_workers=workers, collate_fn=collate_fn, pin_memory=pin_memory,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    return loader, sampler


class ArrayBatches:
    """The training batches of in-memory images that need no per-image work, the same ones in the
    same order as `train_loader`'s, each one gather from the images kept on the training device:
    a DataLoader's splitting, restacking and copying of every batch is host time that a small
    model's GPU step waits for."""

    def __init__(self, dataset: ArrayImages, sampler: EpochSampler, device: torch.device):
        self.device = device
        if device.type == "cuda" and dataset.images.nbytes > torch.cuda.mem_get_info(device)[0] // 4:
            self.device = torch.device("cpu")  # leave the GPU's memory to the model
            log.info("the training images (%.1f GB) stay in host memory: over a quarter of the GPU's free memory",
                     dataset.images.nbytes / 1e9)
        self.images, self.labels = dataset.images.to(self.device), dataset.labels.to(self.device)
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]]:
        for _, indices in self.sampler.batches(self.device):
            yield self.images[indices], self.labels[indices], []

    def __len__(self) -> int:
        return self.sampler.batches_per_epoch() - self.sampler.skip_batches


def eval_loader(dataset: Dataset | ShardSplit, transform: Callable | None, batch_size: int, workers: int,
                indices: list[int] | None = None, rank: int = 0, ranks: int = 1,
                collate_fn: Callable = collate) -> DataLoader:
    """Every image once, in order (or only `indices`, for one rank's share; of shards, the rank's
    shards)."""
    if isinstance(dataset, ShardSplit):
        return DataLoader(ShardEval(dataset, transform, rank, ranks), batch_size=batch_size, num_workers=workers,
                          collate_fn=collate_fn)
    return DataLoader(Transformed(dataset, transform), batch_size=batch_size, sampler=indices,
                      num_workers=workers, collate_fn=collate_fn)

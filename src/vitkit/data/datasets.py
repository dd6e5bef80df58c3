"""Two kinds of image sets behind one interface: arrays in memory, and files decoded on demand.

`ds[i]` is `(uint8 image (C, H, W) or None, label, problem or None)`: a file that fails to
decode comes back as None with the reason, and the loader's collate drops and reports it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from vitkit.data.decode import BadImage, read_image
from vitkit.data.folder import FileTree
from vitkit.data.transforms import Fit

Sample = tuple[torch.Tensor | None, int, tuple[str, str] | None]


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out): `fraction` of each class held out, chosen by `seed`."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--val-split must be between 0 and 1 (exclusive), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for cls in labels.unique():
        idx = (labels == cls).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_held = round(len(idx) * fraction)
        if len(idx) > 1:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


class ArrayImages(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Sample:
        return self.images[i], int(self.labels[i]), None

    def __getitems__(self, indices: list[int]) -> list[Sample]:
        """A whole batch in one indexing operation (the DataLoader uses this when present)."""
        idx = torch.as_tensor(indices)
        return [(x, y, None) for x, y in zip(self.images[idx].unbind(0), self.labels[idx].tolist(), strict=True)]

    def subset(self, idx: torch.Tensor) -> ArrayImages:
        return ArrayImages(self.images[idx], self.labels[idx])

    def split(self, fraction: float, seed: int) -> tuple[ArrayImages, ArrayImages]:
        keep, held = stratified_split(self.labels, fraction, seed)
        return self.subset(keep), self.subset(held)

    def relabel(self, own: list[str], target: list[str]) -> ArrayImages:
        return ArrayImages(self.images, _label_map(own, target)[self.labels])

    def resized(self, size: tuple[int, int]) -> ArrayImages:
        """All images resized once, up front, so no per-image work is left for the loader."""
        if tuple(self.images.shape[-2:]) == tuple(size):
            return self
        return ArrayImages(Fit(size)(self.images), self.labels)


class FileImages(Dataset):
    def __init__(self, tree: FileTree, channels: int, max_side: int | None = None):
        self.sources, self.names = tree.sources, tree.names
        self.labels = torch.tensor(tree.labels, dtype=torch.long)
        self.classes, self.channels, self.max_side = tree.classes, channels, max_side

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Sample:
        try:
            image = read_image(self.sources[i], self.channels, self.max_side)
        except BadImage as e:
            return None, int(self.labels[i]), (self.names[i], str(e))
        return image, int(self.labels[i]), None

    def subset(self, idx: torch.Tensor) -> FileImages:
        tree = FileTree([self.sources[i] for i in idx], [self.names[i] for i in idx],
                        self.labels[idx].tolist(), self.classes)
        return FileImages(tree, self.channels, self.max_side)

    def split(self, fraction: float, seed: int) -> tuple[FileImages, FileImages]:
        keep, held = stratified_split(self.labels, fraction, seed)
        return self.subset(keep), self.subset(held)

    def decoded(self, size: tuple[int, int]) -> tuple[ArrayImages, list[tuple[str, str]]]:
        """Decode every image once, at `size`: for archives of small images, whose encoded bytes
        are in memory anyway, so that training never waits for JPEG decoding."""
        images, labels, problems = [], [], []
        for i in range(len(self)):
            image, label, problem = self[i]
            if problem:
                problems.append(problem)
                continue
            images.append(Fit(size)(image))
            labels.append(label)
        return ArrayImages(torch.stack(images), torch.tensor(labels)), problems

    def relabel(self, own: list[str], target: list[str]) -> FileImages:
        tree = FileTree(self.sources, self.names, _label_map(own, target)[self.labels].tolist(), target)
        return FileImages(tree, self.channels, self.max_side)


def _label_map(own: list[str], target: list[str]) -> torch.Tensor:
    unknown = [c for c in own if c not in target]
    if unknown:
        raise ValueError(f"class folders {unknown} are not classes of the model; the data has "
                         f"{own}, the model knows {target}")
    return torch.tensor([target.index(c) for c in own], dtype=torch.long)


class Transformed(Dataset):
    """Apply a per-image transform (torchvision v2) in the loader's worker processes; with no
    transform, array data is fetched a batch at a time."""

    def __init__(self, base: Dataset, transform: Callable[[torch.Tensor], torch.Tensor] | None):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Sample:
        image, label, problem = self.base[i]
        if image is None or self.transform is None:
            return image, label, problem
        try:
            return self.transform(image), label, problem
        except BadImage as e:  # an image the transform refuses (too elongated for a token budget): skipped, said why
            names = getattr(self.base, "names", None)
            return None, label, (names[i] if names else f"image {i}", str(e))

    def __getitems__(self, indices: list[int]) -> list[Sample]:
        if self.transform is None and hasattr(self.base, "__getitems__"):
            return self.base.__getitems__(indices)
        return [self[i] for i in indices]


def collate(batch: list[Sample]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Stack the good samples; return the bad ones' (name, reason) for the report."""
    good = [(x, y) for x, y, _ in batch if x is not None]
    problems = [p for _, _, p in batch if p is not None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), problems
    images, labels = zip(*good, strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), problems

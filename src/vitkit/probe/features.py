"""What a frozen model makes of images: the pooled pre-logits representation (the input of the
head, `model.pool` of the final tokens) and, if asked, the tokens of one block
(`model.forward_intermediates`), for retrieval, probing and few-shot evaluation.

Images go in as every vitkit command feeds them: brought to the model's size by `eval_transform`
(resize to cover, centre crop), then the model's own input normalization (`model.normalization`,
which `vitkit.load` sets from the weights; half if it has none). Gray images are repeated for an
RGB model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset

from vitkit import atomic
from vitkit.data import folder, transforms
from vitkit.data import spec as data_spec
from vitkit.data.datasets import ArrayImages, FileImages, Sample
from vitkit.data.loader import default_workers, eval_loader
from vitkit.model.normalization import HALF
from vitkit.model.vit import ViT


@dataclass
class Features:
    pooled: torch.Tensor  # (images, feature_dim): what the head classifies
    labels: torch.Tensor  # (images,) class indices
    tokens: torch.Tensor | None = None  # (images, prefix + patches, dim): the chosen block's output
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable files: (name, reason)
    positions: torch.Tensor | None = None  # which of the data set's images each row is


def open_model(source: str | Path, device: torch.device | str | None = None, revision: str | None = None) -> ViT:
    """A run directory or any weights `vitkit.load` reads (at the Hub `revision`), in eval mode."""
    from vitkit.weights import load

    return load(source, revision=revision).eval().to(device or "cpu")


class _Positions(Dataset):
    """A data set whose samples carry their position instead of their label, so that the rows
    kept after unreadable files are dropped can be matched to their labels."""

    def __init__(self, base: ArrayImages | FileImages):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Sample:
        image, _, problem = self.base[i]
        return image, i, problem

    def __getitems__(self, indices: list[int]) -> list[Sample]:
        if hasattr(self.base, "__getitems__"):
            return [(x, i, p) for (x, _, p), i in zip(self.base.__getitems__(indices), indices, strict=True)]
        return [self[i] for i in indices]


def forward_features(model: ViT, x: torch.Tensor, layer: int | None = None,
                     norm: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalised images -> (pooled pre-logits features, block `layer`'s tokens or None), in one
    pass: `forward_intermediates` gives block `layer` and the last block, whose tokens after the
    final norm are what `model.pool` (and so the head) sees. `norm`: pass block `layer`'s tokens
    through the final norm too."""
    if layer is None:
        return model.pool(model.forward_tokens(x, last_queries=model.config.head_tokens)[0]), None
    depth = model.config.depth
    if not -depth <= layer < depth:
        raise ValueError(f"layer {layer} is not a block of this {depth}-block model (0 to {depth - 1}, or -1 to "
                         f"-{depth} from the end)")
    out = model.forward_intermediates(x, layers=sorted({layer % depth, depth - 1}))
    tokens = [torch.cat([prefix, patches], dim=1) for prefix, patches in zip(out.prefix, out.features, strict=True)]
    grid = (x.shape[-2] // model.config.patch_hw[0], x.shape[-1] // model.config.patch_hw[1])
    pooled = model.pool(model.final(tokens[-1], grid))  # the final norm (or SAM's neck)
    block = model.final(tokens[0], grid) if norm else tokens[0]
    return pooled, block


def as_maps(tokens: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(images, prefix + patches, dim) tokens -> the patches' (images, dim, rows, cols) feature
    maps, what a detection or segmentation head reads (ViTDet, SAM)."""
    patches = tokens[:, prefix:]
    return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid).contiguous()


@torch.inference_mode()
def extract(model: ViT, dataset: ArrayImages | FileImages, layer: int | None = None, norm: bool = False,
            batch_size: int = 64, workers: int | None = None) -> Features:
    """Features of every readable image of `dataset`, in order, on the model's device."""
    c, device = model.config, next(model.parameters()).device
    normalization = model.normalization or HALF
    tf = transforms.eval_transform(c.image_hw)
    if isinstance(dataset, ArrayImages):  # resized once, up front, as eval does
        dataset, tf = dataset.resized(c.image_hw), None
    loader = eval_loader(_Positions(dataset), tf, batch_size, default_workers() if workers is None else workers)
    pooled, tokens, positions, skipped = [], [], [], []
    for images, where, bad in loader:
        skipped += bad
        if not len(where):
            continue
        features, block = forward_features(model, normalization(images.to(device), c.in_channels), layer, norm)
        pooled.append(features.float().cpu())
        positions.append(where)
        if block is not None:
            tokens.append(block.float().cpu())
    if not positions:
        raise ValueError("no readable images to compute features of")
    where = torch.cat(positions)
    return Features(torch.cat(pooled), dataset.labels[where], torch.cat(tokens) if tokens else None,
                    [tuple(s) for s in skipped], where)


def images_of(spec: str, split: str | None, channels: int) -> tuple[ArrayImages | FileImages, list[str], str]:
    """The images of a data spec to embed, their class names and the split's name. An image folder
    without split folders is taken whole (split "all") unless a split is asked for; otherwise the
    default is the train split."""
    kind, path = data_spec.parse(spec)
    if kind == "folder" and split is None and not folder.find_splits(path):
        tree = folder.scan(path)
        if not tree.sources:
            raise ValueError(f"no images found in {path}")
        return FileImages(tree, channels), tree.classes, "all"
    split = split or "train"
    splits = data_spec.load(spec, channels=channels)
    return splits.split(split, indexed="vitkit embed"), splits.classes, split


def check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix not in (".npy", ".safetensors"):
        raise ValueError(f"--out {out}: write features to a .npy or a .safetensors file")
    return out


def write(features: Features, out: str | Path, metadata: dict[str, str]) -> list[str]:
    """`.safetensors`: "features", "labels" (and "tokens") in one file with `metadata`.
    `.npy`: the features in OUT, the labels in OUT-stem.labels.npy (and the tokens in
    OUT-stem.tokens.npy). Each file is written atomically. Returns the files written."""
    out = check_out(out)
    arrays = {"features": features.pooled.contiguous(), "labels": features.labels.long().contiguous()}
    if features.tokens is not None:
        arrays["tokens"] = features.tokens.contiguous()
    if out.suffix == ".safetensors":
        with atomic.atomic_path(out) as tmp:
            save_file(arrays, str(tmp), metadata=metadata)
        return [str(out)]
    files = {"features": out, **{k: out.with_name(f"{out.stem}.{k}.npy") for k in arrays if k != "features"}}
    for key, path in files.items():
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arrays[key].numpy())
    return [str(p) for p in files.values()]

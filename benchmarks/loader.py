"""Data loading keeps ahead of the model: the training loader's img/s with 2 workers (decoding
and per-image augmentation, no model) against the model's training img/s, both with the default
recipe vitkit picks for the data set, on the CIFAR-10 JPEG archive and on a folder of JPEG photos
trained at 224 px.

    python benchmarks/loader.py [--cifar ../shared/data/cifar10/cifar10-train-jpg.tar.gz] [--photos 600]

The photos are made from CIFAR-10 images: upscaled to 320x240 with noise added, so that they
compress like photographs rather than like flat upscaled thumbnails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import record, this_command
from vitkit.bench import step_runner
from vitkit.data import spec as data_spec
from vitkit.model.vit import ViT
from vitkit.train.distributed import World
from vitkit.train.feed import build_feed
from vitkit.train.recipe import Recipe, auto_recipe
from vitkit.train.trainer import NO_FLIP


def loader_rate(splits, recipe: Recipe, config, batches: int) -> float:
    feed = build_feed(splits, recipe, config, World())
    feed.sampler.set_epoch(0)
    stream = iter(feed.loader)
    next(stream)  # workers started, first batch in
    start, seen = time.perf_counter(), 0
    for _, (_, labels, _) in zip(range(batches), stream, strict=False):
        seen += len(labels)
    return seen / (time.perf_counter() - start)


def model_rate(config, recipe: Recipe, repeats: int = 3) -> float:
    torch.manual_seed(0)
    x = torch.randn(recipe.batch_size, config.in_channels, *config.image_hw)
    step = step_runner(ViT(config), "train", "bf16", x, own=True)
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return repeats * recipe.batch_size / (time.perf_counter() - start)


def make_photos(cifar_splits, root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    images = cifar_splits.train
    for i in rng.permutation(len(images))[:count].tolist():  # the archive is sorted by class
        image, label = images[i][:2]
        array = image.permute(1, 2, 0).numpy() if hasattr(image, "permute") else np.asarray(image)
        big = np.asarray(Image.fromarray(array).resize((320, 240), Image.BICUBIC), dtype=np.float32)
        big = np.clip(big + rng.normal(0, 8, big.shape), 0, 255).astype(np.uint8)
        folder = root / cifar_splits.classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(big).save(folder / f"{i}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", default="../shared/data/cifar10/cifar10-train-jpg.tar.gz")
    parser.add_argument("--photos", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = ["| data | images | model (default recipe) | loader img/s (2 workers) | model train img/s | "
             "loader / model |", "|---|---|---|---|---|---|"]
    start = time.perf_counter()
    cifar = data_spec.load(args.cifar)
    decode_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        make_photos(cifar, Path(tmp), args.photos)
        for name, spec in (("CIFAR-10 JPEG archive", args.cifar), (f"{args.photos} JPEG photos 320x240", tmp)):
            splits = cifar if spec == args.cifar else data_spec.load(spec)
            recipe, config = auto_recipe(Recipe(workers=2), {"workers"}, splits.image_size, splits.channels,
                                         len(splits.classes), len(splits.train),
                                         splits.name not in NO_FLIP and splits.channels == 3)
            loader = loader_rate(splits, recipe, config, batches=max(4, 4000 // recipe.batch_size))
            model = model_rate(config, recipe)
            shape = f"dim {config.dim}, depth {config.depth}, patch {config.patch_hw[0]}, {config.image_hw[0]} px"
            lines.append(f"| {name} | {len(splits.train)} | {shape}, batch {recipe.batch_size} | {loader:.0f} | "
                         f"{model:.0f} | {loader / model:.1f}x |")
            print(lines[-1], flush=True)
    notes = (f"The archive's 50,000 JPEGs are decoded once, in {decode_s:.0f} s (that time counts in a run's "
             "wall time); its batches then come from memory, and the random crop and flip run on the batch "
             "inside the training step (counted in the model's img/s). The photos are decoded, cropped "
             "(RandomResizedCrop) and RandAugmented per image in the 2 workers. Model img/s: vitkit's training "
             "step (AdamW, bf16 autocast).")
    record(f"Data loading vs the model ({args.threads} threads)", this_command(), "\n".join(lines), notes)


if __name__ == "__main__":
    main()

"""Photos at scale: the 224-px photo recipe's loader from an image folder, from WebDataset shards
and timm's loader on the same images; and a scale run of synthetic ImageNet-like data.

    python benchmarks/streaming.py loaders [--images 10000] [--seconds 20] [--no-record]
    python benchmarks/streaming.py scale [--images 100000] [--no-record]

`loaders`: JPEG photos of 256-400 px (noise over gradients, so they compress like photographs),
in 100 classes, as a folder and as shards (`vitkit shard`). Each loader decodes and augments as the
photo recipe does: RandomResizedCrop to 224, flip, RandAugment (m9), in 1 and then 2 worker
processes, for --seconds after a warm-up or three quarters of an epoch (an epoch's end, where
the workers stop, is not what is measured); images/s, and per worker (per core: each worker is one
process on one core). timm's loader gets the same crop, flip and RandAugment (`rand-m9-mstd0.5`).

`scale`: 100,000 such JPEGs in 1,000 classes (generated, not downloaded), sharded, then two epochs
streamed at 10,000 and 100,000 images, the same number of images from each (a twentieth of the
larger set), and six times as many from the larger: images/s per epoch (steady?), the loader's
peak memory (flat with the file count? with the time streamed?), the start of an epoch (first
batch), and the folder path's memory at the same two sizes (it holds every
file's path and label). Each is measured in a new process; memory is the PSS of that process and its
workers (VmRSS would count the pages they share once in each).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, record
from vitkit.data import sharding
from vitkit.data import spec as data_spec
from vitkit.data.loader import train_loader
from vitkit.data.shards import ShardStream
from vitkit.data.transforms import train_transform

BATCH = 64
PHOTO = train_transform((224, 224), crop="random-resized", min_scale=0.35, augment="randaugment", magnitude=9,
                        erasing=0.0)  # the photo recipe's per-image work


def photos(root: Path, count: int, classes: int, seed: int = 0, processes: int = 2) -> None:
    """`count` JPEGs of 256-400 px per side in `classes` class folders, each drawn from (seed, its
    index), made by `processes` processes."""
    chunks = [range(start, min(start + 1000, count)) for start in range(0, count, 1000)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_photos, [root] * len(chunks), chunks, [classes] * len(chunks), [seed] * len(chunks)))


def _photos(root: Path, indices: range, classes: int, seed: int) -> None:
    for i in indices:
        rng = np.random.default_rng((seed, i))
        h, w = (int(v) for v in rng.integers(256, 401, 2))
        ys, xs = np.mgrid[0:h, 0:w]
        base = np.stack([xs * rng.uniform(0.2, 0.6), ys * rng.uniform(0.2, 0.6), (xs + ys) * 0.2], -1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        folder = root / f"class{i % classes:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:07d}.jpg", quality=88)


def linked(source: Path, target: Path, count: int) -> None:
    """The first `count` photos of `source` (by index) as hard links in `target`: a smaller set of
    the same images, made without writing them again."""
    for path in source.glob("class*/*.jpg"):
        if int(path.stem) < count:
            (target / path.parent.name).mkdir(parents=True, exist_ok=True)
            os.link(path, target / path.parent.name / path.name)


def memory(pids: list[int]) -> int:
    """Proportional set size (PSS) of the processes: a page shared by a process and its forked
    workers counts once in all, not once in each as VmRSS would."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def family() -> list[int]:
    """This process and its children (the loader's workers)."""
    me = os.getpid()
    children = Path(f"/proc/{me}/task/{me}/children")
    return [me, *(int(p) for p in children.read_text().split())] if children.exists() else [me]


def timed(loader, seconds: float, images: int) -> dict:
    """img/s after the first batch, for `seconds` or `images` images, whichever comes first (within
    one epoch: an epoch's end, where the workers stop, is not what is measured); the first batch's
    wait; and the peak memory, sampled every 10 batches."""
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)
    first = time.perf_counter() - start
    count, peak, begin = 0, memory(family()), time.perf_counter()
    for n, (batch, *_) in enumerate(batches, 1):
        count += len(batch)
        if n % 10 == 0:
            peak = max(peak, memory(family()))
        if time.perf_counter() - begin > seconds or count >= images:
            break
    return {"img_per_s": count / (time.perf_counter() - begin), "first_batch_s": first, "memory": peak}


def vitkit_folder(folder: Path, workers: int):
    loader, sampler = train_loader(data_spec.read(str(folder)).train, PHOTO, BATCH, 0, workers)
    sampler.set_epoch(0)
    return loader


def vitkit_shards(shards: Path, workers: int, epoch: int = 0):
    stream = ShardStream(data_spec.read(f"wds:{shards}").train, PHOTO, BATCH, 0, 0, 1, workers)
    stream.set_epoch(epoch)
    return DataLoader(stream, batch_size=None, num_workers=workers)


def timm_folder(folder: Path, workers: int):
    import timm.data

    dataset = timm.data.create_dataset("", root=str(folder), is_training=True)
    return timm.data.create_loader(dataset, (3, 224, 224), BATCH, is_training=True, auto_augment="rand-m9-mstd0.5",
                                   color_jitter=0.0, num_workers=workers, use_prefetcher=False,
                                   device=torch.device("cpu"), persistent_workers=False, scale=(0.35, 1.0))


def loaders(args: argparse.Namespace) -> None:
    figures, lines = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = Path(tmp) / "photos", Path(tmp) / "shards"
        photos(folder, args.images, 100)
        sharding.write(str(folder), shards, 64 << 20, val_split=0.05)
        for workers in (1, 2):
            for name, make in (("folder", vitkit_folder), ("shards", vitkit_shards), ("timm", timm_folder)):
                rates = [timed(make(folder if name != "shards" else shards, workers), args.seconds,
                               args.images * 3 // 4)["img_per_s"] for _ in range(args.repeats)]
                figures[f"{name}, {workers} worker(s): img/s"] = figure(rates, "img/s", 1)
                figures[f"{name}, {workers} worker(s): img/s per worker"] = figure([r / workers for r in rates],
                                                                                   "img/s", 1)
                lines.append(f"{name:7} {workers} worker(s): {statistics.median(rates):7.1f} img/s "
                             f"({min(rates):.1f} - {max(rates):.1f})")
                print(lines[-1], flush=True)
    notes = (f"{args.images} JPEGs of 256-400 px, 100 classes; RandomResizedCrop 224 (scale 0.35-1), flip, "
             f"RandAugment m9 in every loader; batch {BATCH}; {args.repeats} runs of {args.seconds:g} s (or three "
             "quarters of an epoch) each after "
             "the first batch; each worker one process.")
    record("loader-photos", "Photo loaders: image folder, WebDataset shards and timm", figures, notes,
           "\n".join(lines), save=not args.no_record)


def noted(figures: dict, lines: list[str], name: str, result: dict) -> None:
    """A measurement's img/s, memory and first batch, for the record and for people."""
    figures[f"{name}: img/s"] = figure(result["img_per_s"], "img/s", 1)
    figures[f"{name}: memory"] = figure(result["memory"] / 2**20, "MiB", 0)
    figures[f"{name}: first batch"] = figure(result["first_batch_s"], "s", 2)
    lines.append(f"{name}: {result['img_per_s']:.1f} img/s, {result['memory'] / 2**20:.0f} MiB, "
                 f"first batch {result['first_batch_s']:.2f} s")
    print(lines[-1], flush=True)


def scale(args: argparse.Namespace) -> None:
    figures, lines = {}, []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        photos(Path(tmp) / f"photos{args.images}", args.images, 1000)
        linked(Path(tmp) / f"photos{args.images}", Path(tmp) / f"photos{args.images // 10}", args.images // 10)
        for count in (args.images // 10, args.images):
            folder, shards = Path(tmp) / f"photos{count}", Path(tmp) / f"shards{count}"
            sharding.write(str(folder), shards, 512 << 20, val_split=0.01)
            for epoch in range(2):
                noted(figures, lines, f"shards, {count:,} images, epoch {epoch + 1}",
                      fresh("shards", shards, epoch, args.seconds, args.images // 20))
            if count == args.images:
                noted(figures, lines, f"shards, {count:,} images, epoch 1, {6 * args.images // 20:,} streamed",
                      fresh("shards", shards, 0, 6 * args.seconds, 6 * args.images // 20))
            noted(figures, lines, f"folder, {count:,} images", fresh("folder", folder, 0, args.seconds,
                                                                     args.images // 20))
    notes = (f"Synthetic JPEGs of 256-400 px in 1,000 classes, {args.images // 10:,} and {args.images:,}; 2 workers, "
             f"the photo recipe's augmentation, {args.images // 20:,} images (or {args.seconds:g} s) of each epoch "
             "after its first batch, and once six times as many; memory: the peak, "
             "PSS of the loading process and its workers, each measurement in a new process.")
    record("streaming-scale", "Streaming at scale: shards against folders", figures, notes, "\n".join(lines),
           save=not args.no_record)


def fresh(kind: str, path: Path, epoch: int, seconds: float, images: int) -> dict:
    """One loader measured in a new process, so that its memory is the loader's own, not what this
    process kept from making and sharding the photos."""
    done = subprocess.run([sys.executable, __file__, "measure", kind, str(path), "--epoch", str(epoch),
                           "--seconds", str(seconds), "--count", str(images)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.splitlines()[-1])


def measure(args: argparse.Namespace) -> None:
    loader = (vitkit_shards(Path(args.path), 2, args.epoch) if args.kind == "shards"
              else vitkit_folder(Path(args.path), 2))
    print(json.dumps(timed(loader, args.seconds, args.count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["loaders", "scale", "measure"])
    parser.add_argument("kind", nargs="?", choices=["shards", "folder"], help="measure: which loader")
    parser.add_argument("path", nargs="?", help="measure: its folder")
    parser.add_argument("--epoch", type=int, default=0, help="measure: which epoch")
    parser.add_argument("--count", type=int, default=10**9, help="measure: images to stream at most")
    parser.add_argument("--images", type=int, help="photos (loaders: 10000; scale: 100000)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmp", help="where the scale run's images go (several GB)")
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    args = parser.parse_args()
    args.images = args.images or (10_000 if args.mode == "loaders" else 100_000)
    torch.set_num_threads(1)
    {"loaders": loaders, "scale": scale, "measure": measure}[args.mode](args)


if __name__ == "__main__":
    main()

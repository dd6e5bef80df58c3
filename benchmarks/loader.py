"""Does the model wait for data? The loader measured while training shares the cores with it.

    python benchmarks/loader.py [--cifar ../shared/data/cifar10/cifar10-train-jpg.tar.gz] [--photos 600] [--no-record]

`vitkit train` runs, as a user runs it (default recipe and workers), on the CIFAR-10 JPEG archive
and on a folder of JPEG photos trained at 224 px (decoding, RandomResizedCrop and RandAugment per
image in the loader's worker processes, on the same 2 cores as the model). The figures are the
trainer's own counters from metrics.jsonl, for the second epoch (the first pays for start-up and
compilation): the seconds the training loop waited for the next batch, as a share of the epoch's
training time, and the img/s. The photos are made from CIFAR-10 images, upscaled to 320x240 with
noise added so that they compress like photographs rather than like flat upscaled thumbnails. Each
run appends a record to benchmarks/results/loader.jsonl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, record
from vitkit.data import spec as data_spec

SHARED = Path(__file__).parents[2] / "shared"


def make_photos(cifar_splits, root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    images = cifar_splits.train
    for i in rng.permutation(len(images))[:count].tolist():  # the archive is sorted by class
        image, label = images[i][:2]
        array = image.permute(1, 2, 0).numpy()
        big = np.asarray(Image.fromarray(array).resize((320, 240), Image.BICUBIC), dtype=np.float32)
        big = np.clip(big + rng.normal(0, 8, big.shape), 0, 255).astype(np.uint8)
        folder = root / cifar_splits.classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(big).save(folder / f"{i}.jpg", quality=90)


def train(data: str, out: Path, extra: list[str]) -> tuple[dict, dict, float]:
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "vitkit", "train", data, "--epochs", "2", "--out", str(out),
                           "--json", *extra], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    second = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    config = json.loads((out / "config.json").read_text())
    return second, config, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", default=str(SHARED / "data/cifar10/cifar10-train-jpg.tar.gz"))
    parser.add_argument("--photos", type=int, default=600)
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    args = parser.parse_args()
    lines = ["| data | model and loader (defaults) | img/s | waited for data | wall |", "|---|---|---|---|---|"]
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        make_photos(data_spec.load(args.cifar), Path(tmp) / "photos", args.photos)
        for name, spec in (("CIFAR-10 JPEG archive (decoded once, batches from memory)", args.cifar),
                           (f"{args.photos} JPEG photos 320x240, 224 px", str(Path(tmp) / "photos"))):
            second, config, wall = train(spec, Path(tmp) / f"run-{len(lines)}", [])
            vit, recipe = config["vit"], config["recipe"]
            model = (f"dim {vit['dim']}, depth {vit['depth']}, {vit['patch_embed']}, {vit['image_size']} px, "
                     f"batch {recipe['batch_size']}, crop {recipe['crop']}, augment {recipe['augment']}")
            share = second["loader_wait_s"] / second["train_seconds"]
            lines.append(f"| {name} | {model} | {second['img_per_s']:.0f} | {100 * share:.1f}% of "
                         f"{second['train_seconds']:.0f} s | {wall:.0f} s |")
            print(lines[-1], flush=True)
            short = "CIFAR-10 archive" if spec == args.cifar else f"{args.photos} JPEG photos at 224 px"
            figures[f"{short}: img/s"] = figure(second["img_per_s"], "img/s", 1)
            figures[f"{short}: waited for data"] = figure(100 * share, "%", 2)
    record("loader", "Data loading while training shares the cores", figures,
           "Epoch 2 of 2, from the trainer's counters (metrics.jsonl: loader_wait_s, train_seconds).",
           "\n".join(lines), save=not args.no_record)


if __name__ == "__main__":
    main()

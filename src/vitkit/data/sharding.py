"""`vitkit shard`: any data set vitkit reads, written as WebDataset shards (data/shards.py).

Images keep their original encoded bytes where they have them (files, archive members, Hugging
Face datasets' image bytes), never re-encoded; images held only as pixels (digits, MNIST, CIFAR's
batches) are written as PNG, losslessly. A data set without a validation split gets one held out
here (stratified, fixed by the seed), so the shards have train, val and test as the source has.
Samples are shuffled once, with the seed, so that each shard holds every class.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

from vitkit.data import shards
from vitkit.data.datasets import ArrayImages, FileImages
from vitkit.data.hf import HFImages
from vitkit.data.spec import hold_out, read


def parse_size(text: str) -> int:
    """`512MB`, `1GB`, `300KB` or a number of bytes."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    upper = text.strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit):
            try:
                return int(float(upper[:-len(unit)]) * factor)
            except ValueError:
                break
    if upper.isdigit():
        return int(upper)
    raise ValueError(f"--shard-size {text!r}: use a size such as 512MB, 1GB or 100000000")


def write(spec: str, out: Path, shard_bytes: int, val_split: float = 0.1, seed: int = 0,
          progress: Callable[[int], None] | None = None) -> dict:
    """Write `spec` as shards in `out`; returns the index (dataset.json) written last."""
    if shard_bytes < 1:
        raise ValueError("--shard-size must be positive")
    splits = hold_out(read(spec, decode_archives=False), val_split, seed)
    if isinstance(splits.train, shards.ShardSplit) and not splits.train.shards[0].columns:
        raise ValueError(f"{spec} is already shards: copy its folder, or shard the data it was written from")
    if splits.train is None:
        raise ValueError(f"data set {spec!r} has no training images")
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in shards.SPLITS:
        images = getattr(splits, name)
        if images is not None and len(images):
            written[name] = shards.write_split(name, samples(images, name, seed), out, shard_bytes, progress)
    shards.write_index(out, splits.name, list(splits.classes), splits.channels, written)
    return {"out": str(out), "classes": len(splits.classes), "splits": {k: len(v[1]) for k, v in written.items()},
            "shards": {k: len(v[0]) for k, v in written.items()}, "skipped": list(splits.skipped)}


def samples(images: ArrayImages | FileImages | HFImages | shards.ShardSplit, split: str,
            seed: int) -> Iterator[tuple[str, bytes, str, int]]:
    """(key, encoded bytes, extension, label) of every image, in an order shuffled by the seed (a
    streamed dataset's rows in their files' order: the stream shuffles when it reads them)."""
    if isinstance(images, shards.ShardSplit):
        rows = (row for shard in images.shards for row in shards.read_shard(shard))
        for n, row in enumerate(rows):
            data = shards.image_of(row) or b""
            yield f"{split}{n:09d}", data, image_format(data), -1 if row["cls"] is None else int(row["cls"])
        return
    order = list(range(len(images)))
    random.Random(f"{seed}-{split}").shuffle(order)
    for n, i in enumerate(order):
        label = int(images.labels[i])
        if isinstance(images, ArrayImages):
            yield f"{split}{n:09d}", shards.encoded(images.images[i]), "png", label
            continue
        data, name = original(images, i)
        yield f"{split}{n:09d}", data, Path(name).suffix.lower().lstrip(".") or "jpg", label


def original(images: FileImages | HFImages, i: int) -> tuple[bytes, str]:
    """An image's own encoded bytes, and a name whose extension is its format's."""
    if isinstance(images, HFImages):
        data = images.encoded(i) or b""
        return data, f"row.{image_format(data)}"
    source, name = images.sources[i], images.names[i]
    if isinstance(source, bytes):
        return source, name
    return Path(source).read_bytes(), name


def image_format(data: bytes) -> str:
    """The extension of encoded image bytes' format (png for what is not an image: the reader
    will skip it and say so)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return (img.format or "png").lower().replace("jpeg", "jpg")
    except (OSError, ValueError):
        return "png"


def describe(result: dict) -> str:
    counts = ", ".join(f"{name} {n:,} images in {result['shards'][name]} shard(s)" for name, n in
                       result["splits"].items())
    return f"wrote {result['out']}: {counts}; {result['classes']} classes (wds:{result['out']})"


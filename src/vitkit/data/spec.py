"""`--data SPEC` -> the train / validation / test sets, class names and native image shape.

SPEC is `digits`, `mnist:DIR`, `fashion-mnist:DIR`, `cifar10:DIR`, `cifar100:DIR` (DIR may be the
.tar.gz), an image-folder DIR / .tar / .tar.gz, `wds:DIR` (WebDataset shards: data/shards.py),
`hfds:PATH` (a Hugging Face dataset: data/hf.py) or `hfids:PATH` (one streamed: data/hf_stream.py).
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vitkit.data import arrays, folder, hf, shards
from vitkit.data.datasets import ArrayImages, FileImages
from vitkit.data.hf import HFImages
from vitkit.data.shards import ShardSplit

DECODE_ARCHIVE_BYTES = 1 << 30  # archives of small images are decoded once, up to 1 GiB of pixels
KINDS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "wds", "hfds", "hfids")


@dataclass(frozen=True)
class DataSplits:
    """What a data spec yields. `val` is held out from training; `test` is the official split."""

    name: str
    classes: list[str]
    channels: int
    image_size: tuple[int, int] | None  # native size when all images share one; else None
    train: ArrayImages | FileImages | HFImages | ShardSplit | None
    val: ArrayImages | FileImages | HFImages | ShardSplit | None
    test: ArrayImages | FileImages | HFImages | ShardSplit | None = None
    skipped: tuple[tuple[str, str], ...] = ()  # unreadable files found while scanning

    def split(self, name: str, indexed: str | None = None) -> ArrayImages | FileImages | HFImages | ShardSplit:
        """A split by name; `indexed` names the command when it needs images by index, which a
        stream of shards does not give."""
        found = getattr(self, name, None) if name in ("train", "val", "test") else None
        if found is None:
            have = [s for s in ("train", "val", "test") if getattr(self, s) is not None]
            raise ValueError(f"data set {self.name!r} has no {name!r} split; it has {have}")
        if indexed and isinstance(found, ShardSplit):
            raise ValueError(f"{indexed} reads images by index, and wds: shards and hfids: files are read in "
                             "sequence; give it the data as a folder, an archive or hfds:...")
        return found


def parse(spec: str) -> tuple[str, Path | None]:
    kind, sep, rest = spec.partition(":")
    if spec == "digits":
        return "digits", None
    if sep and kind in KINDS:
        if not rest:
            raise ValueError(f"--data {spec!r} needs a path after the colon, e.g. {kind}:/data/{kind}")
        return kind, Path(rest).expanduser()  # (a wds: brace pattern stays as written: str(path))
    path = Path(spec).expanduser()
    if path.exists():
        return "folder", path
    if sep and len(kind) > 1:  # not a Windows drive letter
        raise ValueError(f"unknown data kind {kind!r} in --data {spec!r}; use one of "
                         f"{', '.join(KINDS)}, or an image-folder path")
    raise FileNotFoundError(f"--data {spec!r}: no such file or folder (known kinds: "
                            f"{', '.join(KINDS)}; or an image folder)")


def load(spec: str, val_split: float = 0.1, seed: int = 0, channels: int | None = None) -> DataSplits:
    """Open a data set and hold out its validation split: `read` then `hold_out`."""
    return hold_out(read(spec, channels), val_split, seed)


def read(spec: str, channels: int | None = None, decode_archives: bool = True) -> DataSplits:
    """Read what a data spec names, as it is on disk: `val` is None when the data has no
    validation split of its own (`hold_out` makes one). `channels` forces 1 or 3 channels for
    image folders; `decode_archives` off keeps an archive's images as their encoded bytes."""
    kind, path = parse(spec)
    if kind == "wds":
        return _streamed(shards.open_shards(str(Path(spec.partition(":")[2]).expanduser())))
    if kind == "hfids":
        hf.require_datasets()  # (and pyarrow with it)
        from vitkit.data import hf_stream

        return _streamed(hf_stream.open_stream(spec.partition(":")[2], channels))
    if kind == "hfds":
        name, classes, found = hf.open_dataset(spec.partition(":")[2], channels)
        train = found["train"]
        size = typical_size([train.encoded(i) or b"" for i in range(0, len(train), max(1, len(train) // 64))][:64])
        return DataSplits(name, classes, train.channels, size, train, found.get("val"), found.get("test"))
    if kind == "digits":
        train, test, classes = arrays.digits()  # the recipe is chosen on val; test is scored once, at the end
        return DataSplits("digits", classes, 1, (8, 8), ArrayImages(*train), None, ArrayImages(*test))
    if kind in ("mnist", "fashion-mnist"):
        train, test = arrays.idx_split(path, "train"), arrays.idx_split(path, "test")
        classes = arrays.FASHION_CLASSES if kind == "fashion-mnist" else arrays.MNIST_CLASSES
        return DataSplits(kind, classes, 1, (28, 28), ArrayImages(*train), None, ArrayImages(*test))
    if kind in ("cifar10", "cifar100"):
        train, test, classes = arrays.cifar(path, kind)
        return DataSplits(kind, classes, 3, (32, 32), ArrayImages(*train), None, ArrayImages(*test))
    return _image_folder(path, channels, decode_archives)


def _streamed(found: dict[str, ShardSplit]) -> DataSplits:
    """Data read in sequence (shards, or a dataset's files), its image size from a first few."""
    first = next(iter(found.values()))
    probe = [shards.image_of(s) or b"" for s, _ in
             zip(shards.read_shard(first.shards[0]), range(16), strict=False)] if first.shards else []
    return DataSplits(first.source, list(first.classes), first.channels, typical_size(probe), found.get("train"),
                      found.get("val"), found.get("test"))


def hold_out(splits: DataSplits, fraction: float, seed: int) -> DataSplits:
    """`splits` with a validation split: its own, else `fraction` of train held out (stratified,
    fixed by `seed`; of data read in sequence, as `ShardSplit.split` says). The test split stays
    untouched for the final evaluation."""
    if splits.val is not None or splits.train is None:
        return splits
    train, val = splits.train.split(fraction, seed)
    return dataclasses.replace(splits, train=train, val=val)


def _image_folder(root: Path, channels: int | None, decode_archives: bool = True) -> DataSplits:
    if not (root.is_dir() or folder.is_archive(root)):
        raise ValueError(f"{root} is neither an image folder nor a .tar/.tar.gz archive of one")
    splits = folder.find_splits(root)
    trees = {name: folder.scan(root, sub) for name, sub in splits.items()}
    if not trees:
        trees = {"all": folder.scan(root)}
    classes = next(iter(trees.values())).classes
    for name, tree in trees.items():
        if tree.classes != classes:
            raise ValueError(f"the {name!r} split's classes {tree.classes} differ from {classes}")
        if not tree.sources:
            raise ValueError(f"no images found in {root}" + (f" ({name} split)" if name != "all" else "")
                             + "; expected <class>/<image> sub-folders with .jpg/.png/... files")
    channels = channels or 3
    datasets = {name: FileImages(tree, channels) for name, tree in trees.items()}
    skipped = [item for tree in trees.values() for item in tree.skipped]
    size = typical_size(next(iter(trees.values())).sources)
    total = sum(len(t.sources) for t in trees.values())
    small = size and total * channels * size[0] * size[1] <= DECODE_ARCHIVE_BYTES
    if decode_archives and folder.is_archive(root) and small:
        for key, ds in datasets.items():
            datasets[key], problems = ds.decoded(size)
            skipped += problems
    train = datasets.get("train", datasets.get("all"))
    return DataSplits(root.name, classes, channels, size, train, datasets.get("val"), datasets.get("test"),
                      tuple(skipped))


def typical_size(sources: list, probe: int = 64) -> tuple[int, int] | None:
    """The median shorter side of up to `probe` images (headers only), as a square size."""
    sides = []
    step = max(1, len(sources) // probe)
    for source in sources[::step][:probe]:
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                sides.append(min(img.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    if not sides:
        return None
    side = sorted(sides)[len(sides) // 2]
    return side, side


def load_for_eval(spec: str, split: str, classes: list[str], channels: int, val_split: float = 0.1,
                  seed: int = 0, indexed: str | None = None) -> tuple[ArrayImages | FileImages, list[tuple[str, str]]]:
    """The images to evaluate a run on, labelled in the run's class order, and skipped files.

    An image folder without split sub-folders is evaluated whole; its class folders are matched
    to the run's classes by name.
    """
    kind, path = parse(spec)
    if kind == "folder" and not folder.find_splits(path):
        tree = folder.scan(path)
        own, data, skipped = tree.classes, FileImages(tree, channels), tree.skipped
        if not tree.sources:
            raise ValueError(f"no images found in {path}")
    else:
        splits = load(spec, val_split=val_split, seed=seed, channels=channels)
        own, data, skipped = splits.classes, splits.split(split, indexed), splits.skipped
    if own != classes and isinstance(data, ShardSplit):
        raise ValueError(f"the shards' classes {own[:5]}... are not the model's {classes[:5]}... in the same order")
    return (data if own == classes else data.relabel(own, classes)), skipped

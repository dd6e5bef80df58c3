"""WebDataset shards: a data set as tar files of samples, for data larger than one disk or memory.

Layout (`vitkit shard` writes it): `DIR/{train,val,test}-NNNNNN.tar`, each sample `KEY.<ext>` (the
image's original encoded bytes, or PNG for images held as pixels) and `KEY.cls` (the class index);
`classes.json`; and `dataset.json`, the index: each split's shards with their sample counts, byte
sizes and sha256, and its counts per class. The index is written last, so a killed `shard`
leaves no data set that looks whole; shards are written under temporary names and renamed.

Reading (`wds:DIR`, `wds:DIR/dataset.json` or `wds:DIR/train-{000000..000099}.tar`): nothing is
listed or held in memory per sample, only per shard. An epoch of training is one global sequence
of samples (the split's shards in an order drawn from the seed and the epoch, concatenated), cut
into equal ranges, one per (process, loader worker): every process takes the same number of steps
however unevenly the shards divide, and what is left over at the end (less than one batch per
worker) is counted and logged. Each worker reads its range shard by shard (webdataset's tar
iterator, only image and .cls members: nothing in a shard is unpickled) through a shuffle buffer.

Resuming mid-epoch: each worker's place in its range follows from the steps taken (the loader
takes the workers' batches in turn), so a resumed epoch reads on from there: it yields exactly the
samples it had left to yield, and the samples that were in a worker's shuffle buffer when the run
stopped are the only ones affected: up to `shuffle` of them per worker are skipped, and as many
that had been yielded already are yielded again. A run on shards resumes with its own number of
processes and loader workers (they cut the ranges).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info

from vitkit import atomic
from vitkit.data.datasets import collate
from vitkit.data.decode import IMAGE_EXTENSIONS, BadImage, read_image
from vitkit.data.seeds import mix_seed

log = logging.getLogger("vitkit")
INDEX, CLASSES, FORMAT = "dataset.json", "classes.json", "vitkit-shards"
SPLITS = ("train", "val", "test")
EXTENSIONS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
IMAGE_KEYS = (*EXTENSIONS, "image")  # where a sample holds its image: a tar member's extension, a row's "image"
SHUFFLE = 2000  # samples in each worker's shuffle buffer (their encoded bytes: ~200 MB of ImageNet JPEGs)
HOLD_OUT_BLOCK = 256  # rows: a table's validation split is drawn in blocks of at most this many


def require_webdataset():
    try:
        import webdataset
    except ImportError:
        raise ValueError("wds: data needs the webdataset package: pip install 'vitkit[wds]'") from None
    return webdataset


@dataclass(frozen=True)
class Shard:
    path: Path
    samples: int
    bytes: int | None = None  # None: not recorded (shards given by a pattern without an index)
    sha256: str | None = None
    columns: tuple[str, str] | None = None  # a table's (image, label) columns (hfids:); None: a tar of samples
    start: int = 0  # a table's first row in its file (a split's share of a file: see ShardSplit.split)


@dataclass(frozen=True)
class ShardSplit:
    """One split's shards: what a stream of it needs to know, per shard, never per sample."""

    name: str
    shards: tuple[Shard, ...]
    classes: tuple[str, ...]
    channels: int = 3
    source: str = "shards"  # the data set they were written from (dataset.json's "name")

    def __len__(self) -> int:
        return sum(s.samples for s in self.shards)

    def per_worker(self, batch: int, ranks: int, workers: int) -> int:
        """Samples each (process, worker) takes an epoch: the same for all, whole batches."""
        return len(self) // (ranks * max(workers, 1) * batch) * batch

    def steps_per_epoch(self, batch: int, ranks: int, workers: int) -> int:
        return max(workers, 1) * self.per_worker(batch, ranks, workers) // batch

    def split(self, fraction: float, seed: int) -> tuple[ShardSplit, ShardSplit]:
        """A validation split held out of data read in sequence, about `fraction` of it, drawn by
        `seed`: of tables, blocks of rows from across every file (files are often sorted by class,
        so not their tails); of tar shards, whole shards (a tar is read from its start)."""
        if not 0 < fraction < 1:
            raise ValueError(f"--val-split must be between 0 and 1 (exclusive), got {fraction}")
        keep, held = (_held_out_rows if self.shards and self.shards[0].columns else _held_out_shards)(
            self.shards, fraction, seed)
        if not held or not keep:
            raise ValueError(f"{self.shards[0].path if len(self.shards) == 1 else self.name}: {len(self)} samples in "
                             f"{len(self.shards)} shard(s) cannot hold out --val-split {fraction}; give more shards, "
                             "or write them with `vitkit shard` from the data they hold (it holds one out)")
        return dataclasses.replace(self, shards=keep), dataclasses.replace(self, name="val", shards=held)

    def check(self) -> None:
        """Every shard present, and as large as the index says (a truncated shard is found here)."""
        for shard in self.shards:
            if not shard.path.is_file():
                raise FileNotFoundError(f"shard {shard.path} is missing; the index ({INDEX}) lists it")
            if shard.bytes is not None and shard.path.stat().st_size != shard.bytes:
                raise ValueError(f"shard {shard.path} has {shard.path.stat().st_size:,} bytes and {INDEX} says "
                                 f"{shard.bytes:,}: truncated or rewritten; write the shards again (vitkit shard)")


def _held_out_shards(shards: tuple[Shard, ...], fraction: float, seed: int) -> tuple[tuple, tuple]:
    """(kept, held) whole shards: drawn by `seed` until about `fraction` of the samples, one at least."""
    if len(shards) < 2:
        return shards, ()
    order = list(shards)
    random.Random(f"{seed}-held-out-shards").shuffle(order)
    chosen, wanted = [order[0]], fraction * sum(s.samples for s in shards)
    while len(chosen) < len(order) - 1 and sum(s.samples for s in chosen) < wanted:
        chosen.append(order[len(chosen)])
    return tuple(s for s in shards if s not in chosen), tuple(s for s in shards if s in chosen)


def _held_out_rows(shards: tuple[Shard, ...], fraction: float, seed: int) -> tuple[tuple, tuple]:
    """(kept, held) ranges of tables' rows: every file cut into blocks (a tenth of it, at most
    HOLD_OUT_BLOCK rows), `fraction` of all the blocks drawn by `seed`; neighbouring blocks on the
    same side joined again."""
    blocks = []
    for s in shards:
        size = max(1, min(HOLD_OUT_BLOCK, s.samples // 10))
        blocks += [dataclasses.replace(s, start=s.start + o, samples=min(size, s.samples - o))
                   for o in range(0, s.samples, size)]
    if len(blocks) < 2:
        return tuple(shards), ()
    count = min(max(1, round(fraction * len(blocks))), len(blocks) - 1)
    chosen = set(random.Random(f"{seed}-held-out-rows").sample(range(len(blocks)), count))
    sides: tuple[list[Shard], list[Shard]] = ([], [])
    for i, block in enumerate(blocks):
        side = sides[i in chosen]
        if side and side[-1].path == block.path and side[-1].start + side[-1].samples == block.start:
            side[-1] = dataclasses.replace(side[-1], samples=side[-1].samples + block.samples)
        else:
            side.append(block)
    return tuple(sides[0]), tuple(sides[1])


def epoch_order(split: ShardSplit, seed: int, epoch: int) -> list[Shard]:
    """The split's shards in this epoch's order (the same in every process)."""
    order = list(split.shards)
    random.Random(f"{seed}-{epoch}-shards").shuffle(order)
    return order


def segments(order: list[Shard], start: int, stop: int) -> Iterator[tuple[Shard, int, int, int]]:
    """(shard, first, last, position of the shard's first sample) for samples [start, stop) of the
    epoch's sequence."""
    position = 0
    for shard in order:
        end = position + shard.samples
        if end > start and position < stop:
            yield shard, max(start - position, 0), min(stop, end) - position, position
        position = end


class ShardStream(IterableDataset):
    """The training stream of one process: each worker its range of the epoch's sequence, through
    a shuffle buffer, as whole batches of (uint8 images, labels, problems)."""

    def __init__(self, split: ShardSplit, transform: Callable | None, batch: int, seed: int, rank: int,
                 ranks: int, workers: int, shuffle: int = SHUFFLE):
        self.split, self.transform, self.batch, self.seed = split, transform, batch, seed
        self.rank, self.ranks, self.workers, self.shuffle = rank, ranks, max(workers, 1), shuffle
        self.epoch, self.steps_done = 0, 0

    def set_epoch(self, epoch: int, steps_done: int = 0) -> None:
        self.epoch, self.steps_done = epoch, steps_done

    def yielded(self, worker: int) -> int:
        """Samples the worker had yielded after `steps_done` steps: the loader takes the workers'
        batches in turn."""
        return (self.steps_done - worker + self.workers - 1) // self.workers * self.batch

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker = info.id if info else 0
        per_worker = self.split.per_worker(self.batch, self.ranks, self.workers)
        start, done = (self.rank * self.workers + worker) * per_worker, self.yielded(worker)
        rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{worker}-{done}")
        batch: list = []
        for sample, place in _shuffled(self._samples(start + done, start + per_worker), self.shuffle, rng):
            batch.append(_decoded(sample, self.split, self.transform, (self.seed, self.epoch, place)))
            if len(batch) == self.batch:
                yield collate(batch)
                batch = []

    def _samples(self, start: int, stop: int) -> Iterator[tuple[dict, int]]:
        """The range's samples as read (encoded: the shuffle buffer holds bytes, not pixels), each
        with its place in the epoch."""
        order = epoch_order(self.split, self.seed, self.epoch)
        for shard, first, last, position in segments(order, start, stop):
            for offset, sample in enumerate(read_shard(shard, first, last), first):
                yield sample, position + offset


class ShardEval(IterableDataset):
    """A held-out split, every sample once: each process its shards, each worker its share of them."""

    def __init__(self, split: ShardSplit, transform: Callable | None, rank: int = 0, ranks: int = 1):
        self.split, self.transform, self.rank, self.ranks = split, transform, rank, ranks

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for shard in self.split.shards[self.rank::self.ranks][worker::workers]:
            for sample in read_shard(shard, 0, shard.samples):
                yield _decoded(sample, self.split, self.transform, None)


def read_shard(shard: Shard, first: int = 0, last: int | None = None) -> Iterator[dict]:
    """Samples first..last-1 of a shard (all: last None), as webdataset groups a tar's members:
    only image and .cls members are read (a .pyd or .pth member, which webdataset would unpickle,
    never is). A shard with fewer samples than its index says is an error. A table's rows come as
    samples too, their image under "image"."""
    if shard.columns:
        yield from _table_rows(shard, first, last)
        return
    wds = require_webdataset()
    wanted = re.compile(rf".*\.({'|'.join(EXTENSIONS)}|cls)$", re.IGNORECASE)
    index, digest = -1, hashlib.sha256() if shard.sha256 else None
    try:
        with open(shard.path, "rb") as file:
            stream = _Hashing(file, digest) if digest else file
            files = ({**f, "__url__": str(shard.path)} for f in
                     wds.tariterators.tar_file_iterator(stream, select_files=lambda n: bool(wanted.match(n))))
            for index, sample in enumerate(wds.tariterators.group_by_keys(files)):
                if last is not None and index >= last:
                    return
                if index >= first:
                    yield sample
            while digest and stream.read(1 << 20):  # the end-of-archive blocks tarfile leaves unread
                pass
    except (tarfile.TarError, OSError, ValueError) as e:
        raise ValueError(f"cannot read shard {shard.path}: {str(e).splitlines()[0][:200]}; write the shards "
                         "again (vitkit shard)") from None
    if last is not None and index + 1 < last:
        raise ValueError(f"shard {shard.path} holds {index + 1} samples and {INDEX} says {shard.samples}: "
                         "truncated; write the shards again (vitkit shard)")
    if digest and digest.hexdigest() != shard.sha256:
        raise ValueError(f"shard {shard.path} is not the one {INDEX} records (its sha256 differs): changed or "
                         "corrupted; write the shards again (vitkit shard)")


class _Hashing:
    """A file read through with its bytes hashed on the way: a shard read to its end is checked
    against its index's sha256 at no extra reading."""

    def __init__(self, file: io.BufferedReader, digest: hashlib._Hash):
        self.file, self.digest = file, digest

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.digest.update(data)
        return data


def _table_rows(shard: Shard, first: int, last: int | None) -> Iterator[dict]:
    """A table's rows as samples: the image column's bytes (a Hugging Face Image cell holds them
    under "bytes"; a cell with only a path has none) and the label. A file with fewer rows than it
    had when the data was opened is an error, as a truncated shard is."""
    from vitkit.data import tables  # (pyarrow: the hf extra's)

    last = shard.samples if last is None else last
    n = first
    try:
        for n, (image, label) in enumerate(tables.rows(shard.path, list(shard.columns), shard.start + first,
                                                       shard.start + last), first + 1):
            data = image.get("bytes") if isinstance(image, dict) else image if isinstance(image, bytes) else None
            yield {"__key__": f"row {shard.start + n - 1}", "__url__": str(shard.path), "image": data, "cls": label}
    except (OSError, ValueError, KeyError) as e:  # pyarrow's errors are ValueErrors or OSErrors
        raise ValueError(f"cannot read {shard.path}: {str(e).splitlines()[0][:200]}") from None
    if n < last:
        raise ValueError(f"{shard.path} has fewer rows than when the data set was opened: rewritten while in use")


def image_of(sample: dict) -> bytes | None:
    """A sample's encoded image: a tar's image member, or a table row's image cell."""
    return next((sample[e] for e in IMAGE_KEYS if sample.get(e) is not None), None)


def _decoded(sample: dict, split: ShardSplit, transform: Callable | None, seed: tuple | None) -> tuple:
    """(image, label, problem): a sample without an image or a class, or one that does not
    decode, is a problem to skip and list, in its place (so every process keeps its count)."""
    name = f"{sample.get('__url__')}:{sample.get('__key__')}"
    image = image_of(sample)
    try:
        label = int(sample["cls"])
    except (KeyError, ValueError, TypeError):
        return None, 0, (name, "no class in the sample (its .cls, or its label), or not a number")
    if image is None or not 0 <= label < len(split.classes):
        return None, 0, (name, "no image in the sample" if image is None else f"class {label} out of range")
    try:
        pixels = read_image(image, split.channels)
    except BadImage as e:
        return None, label, (name, str(e))
    if transform is not None:
        if seed is not None:  # the sample's place in the epoch: its augmentation whatever process reads it
            torch.default_generator.manual_seed(mix_seed(*seed))  # the CPU's alone, as in loader.py
        pixels = transform(pixels)
    return pixels, label, None


def _shuffled(samples: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer of `size` samples (the whole stream in order when size <= 1)."""
    buffer: list = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


# -- the index -----------------------------------------------------------------------------------
def open_shards(spec: str) -> dict[str, ShardSplit]:
    """The splits a `wds:` spec names: a folder with dataset.json, the dataset.json itself, or a
    brace pattern of one split's shards (`DIR/train-{000000..000099}.tar`) with or without one."""
    path = Path(spec)
    if path.is_dir() or path.name == INDEX:
        return _from_index(path / INDEX if path.is_dir() else path)
    wds = require_webdataset()
    names = [Path(p) for p in wds.shardlists.expand_urls(spec)]
    if not names:
        raise ValueError(f"wds:{spec} names no shards")
    index = names[0].parent / INDEX
    if index.is_file():  # the pattern picks the shards of the splits it names; the index's others stay
        splits, wanted = _from_index(index), {n.resolve() for n in names}
        unknown = wanted - {x.path.resolve() for s in splits.values() for x in s.shards}
        if unknown:
            raise ValueError(f"wds:{spec} names {len(unknown)} shard(s) that {index} does not list, such as "
                             f"{min(unknown).name}; name the shards it lists, or write the index again (vitkit shard)")
        return {name: dataclasses.replace(s, shards=tuple(x for x in s.shards if x.path.resolve() in wanted))
                if any(x.path.resolve() in wanted for x in s.shards) else s for name, s in splits.items()}
    return _counted(names)


def _from_index(index: Path) -> dict[str, ShardSplit]:
    if not index.is_file():
        raise FileNotFoundError(f"no {INDEX} in {index.parent}: write the shards with `vitkit shard`, or name "
                                "them with a brace pattern (wds:DIR/train-{000000..000009}.tar)")
    try:
        meta = json.loads(index.read_text())
        classes = tuple(str(c) for c in meta["classes"])
        splits = {name: ShardSplit(name, tuple(Shard(index.parent / s["name"], int(s["samples"]), s.get("bytes"),
                                                      s.get("sha256")) for s in split["shards"]),
                                   classes, int(meta.get("channels", 3)), str(meta.get("name", "shards")))
                  for name, split in meta["splits"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{index} is not a {FORMAT} index ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{index} is not a {FORMAT} index (format {meta.get('format')!r})")
    for split in splits.values():
        split.check()
    return splits


def _counted(names: list[Path]) -> dict[str, ShardSplit]:
    """Shards without an index: their samples counted once, reading every shard through (no image
    decoded); `vitkit shard` writes the index that spares this."""
    missing = [n for n in names if not n.is_file()]
    if missing:
        raise FileNotFoundError(f"shard {missing[0]} is missing")
    labels: set[int] = set()
    shards = []
    for name in names:
        count = 0
        for sample in read_shard(Shard(name, 0)):
            count += 1
            if sample.get("cls", b"").strip().isdigit():
                labels.add(int(sample["cls"]))
        shards.append(Shard(name, count))
    split = names[0].name.split("-")[0] if names[0].name.split("-")[0] in SPLITS else "train"
    classes = tuple(str(i) for i in range(max(labels, default=-1) + 1))
    return {split: ShardSplit(split, tuple(shards), classes)}


# -- writing -------------------------------------------------------------------------------------
def write_split(name: str, samples: Iterator[tuple[str, bytes, str, int]], out: Path, shard_bytes: int,
                progress: Callable[[int], None] | None = None) -> tuple[list[dict], list[int]]:
    """Write (key, encoded bytes, extension, label) samples as `name-NNNNNN.tar` shards of about
    `shard_bytes` each, each under a temporary name until it is whole. Returns the shards' index
    entries and the samples' labels."""
    wds = require_webdataset()
    entries, labels, current = [], [], None

    def close() -> None:
        writer, tmp, path, count = current
        writer.close()
        entries.append({"name": path.name, "samples": count, "bytes": tmp.stat().st_size, "sha256": _sha256(tmp)})
        tmp.replace(path)

    for key, data, ext, label in samples:
        if current is None or current[0].stream.tell() >= shard_bytes:
            if current is not None:
                close()
            path = out / f"{name}-{len(entries):06d}.tar"
            tmp = path.with_name(f".{path.name}.tmp")
            current = [wds.TarWriter(str(tmp), encoder=False, mtime=0), tmp, path, 0]  # the same data, the same bytes
        current[0].write({"__key__": key, ext: data, "cls": str(label).encode()})
        current[3] += 1
        labels.append(label)
        if progress:
            progress(1)
    if current is not None:
        close()
    return entries, labels


def write_index(out: Path, name: str, classes: list[str], channels: int,
                splits: dict[str, tuple[list[dict], list[int]]]) -> None:
    """classes.json and, last, dataset.json: the data set exists once its index does. `name`: the
    source's (digits, cifar10, a folder's name), which some defaults follow (no flips for digits)."""
    atomic.write_text(out / CLASSES, json.dumps(classes) + "\n")
    meta = {"format": FORMAT, "version": 1, "name": name, "classes": classes, "channels": channels, "splits": {
        name: {"samples": len(labels), "per_class": [labels.count(i) for i in range(len(classes))], "shards": shards}
        for name, (shards, labels) in splits.items()}}
    atomic.write_text(out / INDEX, json.dumps(meta, indent=1) + "\n")


def encoded(image: torch.Tensor) -> bytes:
    """An image held as pixels (uint8 C, H, W), as lossless PNG bytes."""
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""Hugging Face datasets: `hfds:PATH` for a dataset saved with `save_to_disk`, a folder of parquet
or arrow files, or a Hub name where there is a network (`hfds:` as timm names it; `hf-hub:` stays
the prefix for weights).

The image and label columns are found by their features (an `Image` column; a `ClassLabel`
column, whose names are the class names), else by their usual names; `?image=COL&label=COL` in
the spec (what `--image-column/--label-column` add) names them. Images are read as their encoded
bytes (the `Image` feature with decoding off) and decoded by vitkit's own decoder, with its guards;
nothing in a dataset is unpickled. Rows are read on demand, so a dataset larger than memory works
as an image folder does; for data too large for one disk, write it as shards (`vitkit shard`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import parse_qs

import torch
from torch.utils.data import Dataset

from vitkit.data.datasets import Sample, _label_map, stratified_split
from vitkit.data.decode import BadImage, read_image

SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val"), "test": ("test",)}
IMAGE_NAMES, LABEL_NAMES = ("image", "img", "jpg", "png", "pixel_values"), ("label", "labels", "fine_label", "class")


def require_datasets():
    try:
        import datasets
    except ImportError:
        raise ValueError("hfds: and hfids: data need the datasets package: pip install 'vitkit[hf]'") from None
    return datasets


class HFImages(Dataset):
    """One split of a Hugging Face dataset, as vitkit's image sets are: `ds[i]` is
    (uint8 image or None, label, problem or None)."""

    def __init__(self, table, image: str, label: str, channels: int, rows: torch.Tensor | None = None,
                 label_map: torch.Tensor | None = None):
        self.table, self.image, self.label, self.channels = table, image, label, channels
        self.rows = rows if rows is not None else torch.arange(len(table))
        self.labels = torch.tensor(table[label], dtype=torch.long)[self.rows]
        self.label_map = label_map
        if label_map is not None:
            self.labels = label_map[self.labels]
        self.names = None  # rows have no file names: problems name the row

    def __len__(self) -> int:
        return len(self.rows)

    def encoded(self, i: int) -> bytes | None:
        """Image i's encoded bytes as the dataset holds them (or its file's, when it holds a path)."""
        cell = self.table[int(self.rows[i])][self.image]
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if data is None and isinstance(cell, dict) and cell.get("path") and Path(cell["path"]).is_file():
            data = Path(cell["path"]).read_bytes()
        return data

    def __getitem__(self, i: int) -> Sample:
        row, label, data = int(self.rows[i]), int(self.labels[i]), self.encoded(i)
        if data is None:
            return None, label, (f"row {row}", "no image bytes in the row")
        try:
            return read_image(data, self.channels), label, None
        except BadImage as e:
            return None, label, (f"row {row}", str(e))

    def subset(self, idx: torch.Tensor) -> HFImages:
        return HFImages(self.table, self.image, self.label, self.channels, self.rows[idx], self.label_map)

    def split(self, fraction: float, seed: int) -> tuple[HFImages, HFImages]:
        keep, held = stratified_split(self.labels, fraction, seed)
        return self.subset(keep), self.subset(held)

    def relabel(self, own: list[str], target: list[str]) -> HFImages:
        return HFImages(self.table, self.image, self.label, self.channels, self.rows, _label_map(own, target))


def open_dataset(spec: str, channels: int | None = None) -> tuple[str, list[str], dict[str, HFImages]]:
    """(name, class names, {train/val/test: HFImages}) of `hfds:` SPEC's part after the colon."""
    datasets = require_datasets()
    where, _, query = spec.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    found = _load(datasets, where)
    splits = {ours: found[theirs] for ours, names in SPLIT_NAMES.items() for theirs in names if theirs in found}
    if "train" not in splits:
        raise ValueError(f"hfds:{where} has no train split (it has {sorted(found)})")
    first = splits["train"]
    image, label = columns(first.features, options, f"hfds:{where}")
    classes = class_names(first.features[label], lambda: first[label])
    tables = {s: t.cast_column(image, datasets.Image(decode=False)) if isinstance(t.features[image], datasets.Image)
              else t for s, t in splits.items()}
    return Path(where).name or where, classes, {s: HFImages(t, image, label, channels or 3) for s, t in tables.items()}


def _load(datasets, where: str) -> dict:
    """A DatasetDict (or one Dataset, as its train split) from disk or the Hub."""
    path = Path(where).expanduser()
    try:
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
            found = datasets.load_from_disk(str(path))
        elif path.is_dir():
            kind = "parquet" if any(path.rglob("*.parquet")) else "arrow"
            found = datasets.load_dataset(kind, data_dir=str(path))
        else:
            found = datasets.load_dataset(where)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ValueError(f"hfds:{where}: {str(e).splitlines()[0][:200]}") from None
    return found if isinstance(found, datasets.DatasetDict) else {"train": found}


def columns(features: dict, options: dict[str, str], spec: str) -> tuple[str, str]:
    """The (image, label) columns: those the spec names (?image=COL&label=COL), else found by their
    features (Image, ClassLabel), else by their usual names."""
    datasets = require_datasets()
    image = options.get("image") or _column(features, datasets.Image, IMAGE_NAMES, "image")
    label = options.get("label") or _column(features, datasets.ClassLabel, LABEL_NAMES, "label")
    for name in (image, label):
        if name not in features:
            raise ValueError(f"{spec} has no column {name!r}; it has {list(features)}")
    return image, label


def class_names(feature, labels: Callable[[], Iterable[int]]) -> list[str]:
    """A ClassLabel feature's names; else the labels 0..the largest one found (`labels` read once)."""
    if isinstance(feature, require_datasets().ClassLabel):
        return list(feature.names)
    try:
        return [str(c) for c in range(max((int(v) for v in labels() if v is not None), default=-1) + 1)]
    except (TypeError, ValueError) as e:
        raise ValueError(f"the label column holds values that are not class indices ({e}); give it as a "
                         "ClassLabel feature (datasets' class_encode_column)") from None


def _column(features: dict, kind, names: tuple[str, ...], what: str) -> str:
    by_type = [n for n, f in features.items() if isinstance(f, kind)]
    by_name = [n for n in names if n in features]
    if by_type or by_name:
        return (by_type or by_name)[0]
    raise ValueError(f"no {what} column found among {list(features)}: name it with --{what}-column COLUMN")

"""`hfids:PATH`: a Hugging Face dataset streamed from its files (timm's `hfids/`), for data larger
than memory: a folder of parquet or Arrow files, or a dataset saved with `save_to_disk`.

Each of the dataset's files is a shard, read in sequence as WebDataset shards are (data/shards.py):
the same equal steps per process, shuffling, mid-epoch resume and skipping of bad rows. Per file
its schema and row count are held, read from its metadata; per row, nothing. Splits are found by
the file names Hugging Face uses (`train-00000-of-00008.parquet`, `data/validation-*.parquet`, ...);
columns and class names as for `hfds:` (data/hf.py). A validation or test split without labels
(as the Hub's ImageNet test split, all -1) is left out, and the log says so. A Hub dataset is
streamed from its files once they are on a disk this machine reads
(`huggingface-cli download --repo-type dataset NAME`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs

from vitkit.data import hf, tables
from vitkit.data.shards import Shard, ShardSplit

log = logging.getLogger("vitkit")
T = TypeVar("T")


def open_stream(spec: str, channels: int | None = None) -> dict[str, ShardSplit]:
    """{train/val/test: ShardSplit} of `hfids:` SPEC's part after the colon."""
    datasets = hf.require_datasets()
    where, _, query = spec.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    path = Path(where).expanduser()
    if not path.is_dir():
        raise ValueError(f"hfids:{where} is not a folder: hfids: streams a dataset's files from a disk (download a "
                         f"Hub dataset's with `huggingface-cli download --repo-type dataset NAME --local-dir DIR`)")
    files = {name: [(f, *_named(tables.describe, f)) for f in found]
             for name, found in _split_files(datasets, path).items()}
    features = datasets.Features.from_arrow_schema(files["train"][0][1])
    image, label = hf.columns(features, options, f"hfids:{where}")
    usable = {name: described for name, described in files.items() if _has_columns(name, described, image, label)}
    _check_bytes(usable["train"][0][0], image)

    def labels(name: str):
        return (v for f, _, _ in usable[name] for v in _named(lambda f: list(tables.column(f, label)), f))

    classes = tuple(hf.class_names(features[label], lambda: labels("train")))
    found = {}
    for name, described in usable.items():
        if name != "train" and not any(_labelled(v) for v in labels(name)):
            log.warning("hfids:%s: the %s split is left out: it has no labels", where, name)
            continue
        found[name] = ShardSplit(name, tuple(Shard(f, rows, f.stat().st_size, columns=(image, label))
                                             for f, _, rows in described), classes, channels or 3, path.name)
    return found


def _has_columns(split: str, described: list[tuple], image: str, label: str) -> bool:
    """Whether every file of a split has both columns: an error for train; else the split is left out."""
    lacking = next((f for f, schema, _ in described if not {image, label} <= set(schema.names)), None)
    if lacking and split == "train":
        raise ValueError(f"{lacking} has no column {image!r} or {label!r}; all the train files need both")
    if lacking:
        log.warning("the %s split is left out: %s has no column %r or %r", split, lacking, image, label)
    return lacking is None


def _check_bytes(path: Path, image: str) -> None:
    """The image column holds the images' bytes (a cell with only a file's path is not streamed)."""
    cell = next(iter(_named(lambda f: list(tables.rows(f, [image], 0, 1)), path)), (None,))[0]
    if isinstance(cell, dict) and cell.get("bytes") is None and cell.get("path"):
        raise ValueError(f"{path}: the image column holds file paths, not the images; hfids: streams the images "
                         "the files hold: read this dataset with hfds:")


def _labelled(value) -> bool:
    try:
        return value is not None and int(value) >= 0
    except (TypeError, ValueError):
        return True  # a class name: a label, found wanting later if need be


def _named(read: Callable[[Path], T], path: Path) -> T:
    """What `read` reads of a file, or a one-line error naming the file (pyarrow's say what, not where)."""
    try:
        return read(path)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from None


def _split_files(datasets, path: Path) -> dict[str, list[Path]]:
    """Each split's files, by our split names: those `save_to_disk` lists, else those Hugging
    Face's file naming assigns to a split (one configuration's: one folder's)."""
    if (path / "dataset_dict.json").is_file():
        names = json.loads((path / "dataset_dict.json").read_text())["splits"]
        theirs = {name: _saved_files(path / name) for name in names}
    elif (path / "state.json").is_file():
        theirs = {"train": _saved_files(path)}
    else:
        try:
            patterns = datasets.data_files.get_data_patterns(str(path))
            resolved = datasets.data_files.DataFilesDict.from_patterns(patterns, str(path))
        except (FileNotFoundError, datasets.data_files.EmptyDatasetError):
            resolved = {}
        theirs = {str(name): [Path(f) for f in found if Path(f).suffix in tables.SUFFIXES]
                  for name, found in resolved.items()}
    ours = {ours: theirs[name] for ours, names in hf.SPLIT_NAMES.items() for name in names if theirs.get(name)}
    if not ours.get("train"):
        raise ValueError(f"hfids:{path}: no train split in parquet or arrow files (found: "
                         f"{sorted(n for n, f in theirs.items() if f) or 'none'})")
    for name, found in ours.items():
        if len({f.parent for f in found}) > 1:
            folders = sorted({str(f.parent.relative_to(path)) for f in found})
            raise ValueError(f"hfids:{path}: the {name} split's files are in several folders (configurations?): "
                             f"{folders}; name one, hfids:{path}/{folders[0]}")
    return ours


def _saved_files(folder: Path) -> list[Path]:
    """The Arrow files of a split saved with `save_to_disk`, as its state.json lists them."""
    try:
        state = json.loads((folder / "state.json").read_text())
        return [folder / f["filename"] for f in state["_data_files"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{folder} is not a split saved with save_to_disk ({type(e).__name__}: {e})") from None

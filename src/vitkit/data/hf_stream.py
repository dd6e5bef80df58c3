"""`hfids:PATH`: a Hugging Face dataset streamed from its files (timm's `hfids/`), for data larger
than memory: a folder of parquet or Arrow files, or a dataset saved with `save_to_disk`.

Each of the dataset's files is a shard, read in sequence as WebDataset shards are (data/shards.py):
the same equal steps per process, shuffling, mid-epoch resume and skipping of bad rows. Per file
only its row count is held, read from its metadata; per row, nothing. Splits are found by the
file names Hugging Face uses (`train-00000-of-00008.parquet`, `data/validation-*.parquet`, ...);
columns and class names as for `hfds:` (data/hf.py). A Hub dataset is streamed from its files once
they are on a disk this machine reads (`huggingface-cli download --repo-type dataset NAME`).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

from vitkit.data import hf, tables
from vitkit.data.shards import Shard, ShardSplit


def open_stream(spec: str, channels: int | None = None) -> dict[str, ShardSplit]:
    """{train/val/test: ShardSplit} of `hfids:` SPEC's part after the colon."""
    datasets = hf.require_datasets()
    where, _, query = spec.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    path = Path(where).expanduser()
    if not path.is_dir():
        raise ValueError(f"hfids:{where} is not a folder: hfids: streams a dataset's files from a disk (download a "
                         f"Hub dataset's with `huggingface-cli download --repo-type dataset NAME --local-dir DIR`)")
    files = _split_files(datasets, path)
    if "train" not in files:
        raise ValueError(f"hfids:{where} has no train split (it has {sorted(files)})")
    features = datasets.Features.from_arrow_schema(tables.schema(files["train"][0]))
    image, label = hf.columns(features, options, f"hfids:{where}")

    def labels():  # read only when no ClassLabel feature names the classes
        return (v for f in files["train"] for v in tables.column(f, label))

    classes = tuple(hf.class_names(features[label], labels))
    return {name: ShardSplit(name, tuple(Shard(f, tables.count_rows(f), f.stat().st_size, columns=(image, label))
                                         for f in found), classes, channels or 3, path.name)
            for name, found in files.items()}


def _split_files(datasets, path: Path) -> dict[str, list[Path]]:
    """Each split's files, by our split names: those `save_to_disk` lists, else those Hugging
    Face's file naming assigns to a split."""
    if (path / "dataset_dict.json").is_file():
        names = json.loads((path / "dataset_dict.json").read_text())["splits"]
        theirs = {name: _saved_files(path / name) for name in names}
    elif (path / "state.json").is_file():
        theirs = {"train": _saved_files(path)}
    else:
        try:
            patterns = datasets.data_files.get_data_patterns(str(path))
            resolved = datasets.data_files.DataFilesDict.from_patterns(patterns, str(path))
        except (FileNotFoundError, datasets.data_files.EmptyDatasetError) as e:
            raise ValueError(f"hfids:{path}: {str(e).splitlines()[0][:200]}") from None
        theirs = {str(name): [Path(f) for f in found if Path(f).suffix in tables.SUFFIXES]
                  for name, found in resolved.items()}
    ours = {ours: theirs[name] for ours, names in hf.SPLIT_NAMES.items() for name in names if theirs.get(name)}
    if not ours.get("train") and any(theirs.values()):
        raise ValueError(f"hfids:{path}: no train split among {sorted(theirs)} with parquet or arrow files")
    return ours


def _saved_files(folder: Path) -> list[Path]:
    """The Arrow files of a split saved with `save_to_disk`, as its state.json lists them."""
    try:
        state = json.loads((folder / "state.json").read_text())
        return [folder / f["filename"] for f in state["_data_files"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{folder} is not a split saved with save_to_disk ({type(e).__name__}: {e})") from None

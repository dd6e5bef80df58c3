"""Hugging Face datasets streamed from their files (`hfids:`): each parquet or Arrow file a shard,
read in sequence with its rows' images as datasets itself decodes them; splits found by Hugging
Face's file names or save_to_disk's state; sharded to WebDataset with the rows' bytes."""

import json
import tarfile

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers import fruit, png, run_cli
from vitkit.cli import main
from vitkit.data import shards, tables
from vitkit.data import spec as data_spec
from vitkit.data.decode import read_image


def parquet_folder(root, per_file=(7, 5), val=4, bad_row=None):
    """data/train-0000N-of-0000M.parquet and data/validation-00000-of-00001.parquet, as the Hub lays
    them out; rows of each file distinct; `bad_row` of the first file not an image."""
    (root / "data").mkdir(parents=True)
    features, start = None, 0
    for n, count in enumerate(per_file):
        rows, features = fruit(count, bad_row=bad_row if n == 0 else None)
        rows["img"] = [{"bytes": png((start + i, 2 * i, 90), (9 + i % 3, 7)), "path": None}
                       if i != bad_row or n else cell for i, cell in enumerate(rows["img"])]
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            str(root / "data" / f"train-{n:05d}-of-{len(per_file):05d}.parquet"))
        start += count
    rows, _ = fruit(val)
    validation = root / "data" / "validation-00000-of-00001.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(validation))
    return root


def decoded_by_datasets(folder, split):
    """The oracle: datasets' own reading and PIL decoding of the same files, as (uint8 C, H, W
    flattened, label)."""
    found = datasets.load_dataset("parquet", data_dir=str(folder))[split]
    return sorted((tuple(torch.from_numpy(np.array(row["img"].convert("RGB"))).permute(2, 0, 1).flatten().tolist()),
                   row["fine"]) for row in found)


def test_parquet_files_stream_as_shards_with_the_images_datasets_reads(tmp_path):
    folder = parquet_folder(tmp_path / "p")
    splits = data_spec.load(f"hfids:{folder}")
    assert splits.classes == ["apple", "pear"] and splits.name == "p"
    assert [s.samples for s in splits.train.shards] == [7, 5] and len(splits.val) == 4
    for ours, theirs in (("train", "train"), ("val", "validation")):
        rows = [(tuple(x.flatten().tolist()), y) for x, y, _ in shards.ShardEval(getattr(splits, ours), None)]
        assert sorted(rows) == decoded_by_datasets(folder, theirs)


def test_rows_are_read_from_any_row_on_as_pyarrow_reads_them(tmp_path):
    table = pa.table({"image": [bytes([i]) for i in range(100)], "label": list(range(100))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=16)
    for name, kind in (("stream.arrow", pa.ipc.new_stream), ("file.arrow", pa.ipc.new_file)):
        with pa.OSFile(str(tmp_path / name), "wb") as sink, kind(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=16):
                writer.write_batch(batch)
    for path in (tmp_path / "t.parquet", tmp_path / "stream.arrow", tmp_path / "file.arrow"):
        assert tables.describe(path)[1] == 100
        for first, last in ((0, None), (17, 40), (32, 33), (95, None)):
            expected = table.slice(first, (last or 100) - first)
            assert list(tables.rows(path, ["label", "image"], first, last)) == list(
                zip(expected["label"].to_pylist(), expected["image"].to_pylist(), strict=True))


def rows_of(split) -> list[tuple[str, int]]:
    """(file name, row) of every row a streamed split reads."""
    return [(s.path.name, r) for s in split.shards for r in range(s.start, s.start + s.samples)]


def test_a_saved_dataset_streams_with_blocks_of_rows_held_out_across_its_files(tmp_path):
    rows, features = fruit(24)
    test_rows, _ = fruit(6)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features),
                          "test": datasets.Dataset.from_dict(test_rows, features=features)}).save_to_disk(
        tmp_path / "d", num_shards={"train": 4, "test": 1})
    splits = data_spec.load(f"hfids:{tmp_path / 'd'}", val_split=0.2)
    kept, held = rows_of(splits.train), rows_of(splits.val)
    assert len(held) == 5 and not set(kept) & set(held) and len(kept) + len(held) == 24 and len(splits.test) == 6
    assert data_spec.load(f"hfids:{tmp_path / 'd'}", val_split=0.2).val == splits.val  # drawn by the seed
    assert rows_of(data_spec.load(f"hfids:{tmp_path / 'd'}", val_split=0.2, seed=1).val) != held


def test_training_and_evaluating_on_a_stream(tmp_path, capsys):
    folder = parquet_folder(tmp_path / "p", per_file=(12, 12, 12), bad_row=3)
    out = tmp_path / "run"
    assert main(["train", f"hfids:{folder}", "--epochs", "2", "--batch-size", "4", "--workers", "2",
                 "--model-option", "depth=1", "--out", str(out)]) == 0
    assert "train-00000-of-00003.parquet:row 3: not an image file" in (out / "train.log").read_text()
    assert json.loads((out / "config.json").read_text())["classes"] == ["apple", "pear"]
    capsys.readouterr()  # (the training's output)
    code, result, _ = run_cli(capsys, "eval", out, "--data", f"hfids:{folder}", "--split", "val", "--json")
    assert code == 0 and result["images"] == 4  # the validation file's rows, each once


def test_a_stream_is_sharded_with_the_rows_bytes(tmp_path):
    folder = parquet_folder(tmp_path / "p")
    assert main(["shard", f"hfids:{folder}", "--out", str(tmp_path / "wds")]) == 0
    written = []
    for shard in sorted((tmp_path / "wds").glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            written += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png")]
    expected = [cell["bytes"] for f in sorted((folder / "data").glob("train-*")) for cell in
                pq.read_table(f)["img"].to_pylist()]
    assert written == expected


def broken(tmp_path, problem: str) -> str:
    """A data spec with `problem`."""
    folder = parquet_folder(tmp_path / "p")
    if problem == "not a folder":
        return f"hfids:{tmp_path / 'nothing'}"
    if problem == "no files":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "train.jpg").write_bytes(png((1, 2, 3)))
        return f"hfids:{tmp_path}/empty"
    if problem == "corrupt":
        (folder / "data" / "train-00001-of-00002.parquet").write_bytes(b"PAR1 not really")
    if problem == "configurations":
        for config in ("small", "large"):
            (tmp_path / "c" / config).mkdir(parents=True)
            (tmp_path / "c" / config / "train.parquet").hardlink_to(folder / "data" / "train-00000-of-00002.parquet")
        return f"hfids:{tmp_path / 'c'}"
    if problem in ("paths", "names"):
        cells = {"paths": {"picture": [{"bytes": None, "path": "a.png"}] * 4, "kind": [0, 1, 0, 1]},
                 "names": {"picture": [png((1, 1, 1))] * 4, "kind": ["cat", "dog", "cat", "dog"]}}[problem]
        (tmp_path / problem).mkdir()
        pq.write_table(pa.table(cells), tmp_path / problem / "train.parquet")
        return f"hfids:{tmp_path / problem}?image=picture&label=kind"
    return f"hfids:{folder}"


ONE_LINE = {"not a folder": "is not a folder", "no column": "has no column 'nope'",
            "no files": "no train split in parquet or arrow files", "corrupt": "cannot read ",
            "configurations": "files are in several folders (configurations?): ['large', 'small']",
            "paths": "holds file paths, not the images", "names": "values that are not class indices"}


@pytest.mark.parametrize("problem", ONE_LINE)
def test_a_stream_that_cannot_be_read_is_one_line(tmp_path, capsys, problem):
    spec = broken(tmp_path, problem)
    capsys.readouterr()  # (datasets' progress bars)
    columns = ["--image-column", "nope"] if problem == "no column" else []
    assert main(["train", spec, *columns, "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ONE_LINE[problem] in err[0], err


def test_one_file_holds_out_rows_from_across_it_and_unlabelled_splits_are_left_out(tmp_path, caplog):
    (tmp_path / "p").mkdir()
    rows = {"picture": [png((i, 0, 0)) for i in range(40)], "kind": [i // 10 for i in range(40)]}  # sorted by class
    pq.write_table(pa.table(rows), tmp_path / "p" / "train.parquet", row_group_size=8)  # no features: plain columns
    pq.write_table(pa.table({"picture": [png((0, 0, 0))] * 4, "kind": [-1] * 4}), tmp_path / "p" / "test.parquet")
    splits = data_spec.load(f"hfids:{tmp_path / 'p'}?image=picture&label=kind", val_split=0.3)
    assert splits.classes == ["0", "1", "2", "3"] and splits.test is None and "test split is left out" in caplog.text
    held = [r for _, r in rows_of(splits.val)]
    assert len(held) == 12 and len(splits.train) == 28 and len({r // 10 for r in held}) > 1  # not the file's tail
    read = [(tuple(x.flatten().tolist()), y) for x, y, _ in shards.ShardEval(splits.val, None)]
    assert read == [(tuple(read_image(rows["picture"][r]).flatten().tolist()), r // 10) for r in held]



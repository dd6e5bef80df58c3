"""Hugging Face datasets as `hfds:` data: saved with save_to_disk or as parquet, the image and
label columns found by their features (or named), class names from the ClassLabel feature, images
decoded by vitkit from their own bytes; and sharded with those bytes unchanged."""

import json
import tarfile

import datasets
import pytest
import torch

from helpers import fruit, png
from vitkit.cli import main
from vitkit.data import spec as data_spec
from vitkit.data.decode import read_image


@pytest.fixture
def saved(tmp_path):
    rows, features = fruit(20)
    test_rows, _ = fruit(6)
    splits = {"train": datasets.Dataset.from_dict(rows, features=features),
              "test": datasets.Dataset.from_dict(test_rows, features=features)}
    datasets.DatasetDict(splits).save_to_disk(tmp_path / "d")
    return tmp_path / "d", rows


def test_a_saved_dataset_reads_with_its_class_names_and_images(saved):
    folder, rows = saved
    splits = data_spec.load(f"hfds:{folder}", val_split=0.1)
    assert splits.classes == ["apple", "pear"] and splits.channels == 3
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 2, 6)
    for i in range(len(splits.train)):
        image, label, problem = splits.train[i]
        row = int(splits.train.rows[i])
        assert problem is None and label == row % 2
        assert torch.equal(image, read_image(rows["img"][row]["bytes"]))


def test_parquet_files_and_named_columns(tmp_path):
    rows, features = fruit(12, image="picture", label="kind")
    table = datasets.Dataset.from_dict(rows, features=features)
    (tmp_path / "p").mkdir()
    table.to_parquet(str(tmp_path / "p" / "train.parquet"))
    splits = data_spec.load(f"hfds:{tmp_path / 'p'}?image=picture&label=kind", val_split=0.25)
    assert splits.classes == ["apple", "pear"] and len(splits.train) == 8  # 2 of each class held out


def test_a_missing_column_is_one_line(saved, capsys):
    folder, _ = saved
    assert main(["train", f"hfds:{folder}", "--image-column", "nope", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no column 'nope'" in err[0]


def test_sharding_keeps_the_rows_image_bytes(saved, tmp_path):
    folder, rows = saved
    assert main(["shard", f"hfds:{folder}", "--out", str(tmp_path / "wds"), "--val-split", "0.1"]) == 0
    written = []
    for shard in sorted((tmp_path / "wds").glob("*.tar")):
        with tarfile.open(shard) as tar:
            written += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png")]
    assert sorted(written) == sorted([r["bytes"] for r in rows["img"]] + [png((200, 9 * i, 30)) for i in range(6)])
    index = json.loads((tmp_path / "wds" / "dataset.json").read_text())
    assert index["classes"] == ["apple", "pear"] and index["splits"]["test"]["samples"] == 6


def test_training_skips_and_lists_an_undecodable_row(tmp_path):
    rows, features = fruit(16, bad_row=3)
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "d")
    out = tmp_path / "run"
    assert main(["train", f"hfds:{tmp_path / 'd'}", "--epochs", "1", "--batch-size", "4", "--workers", "0",
                 "--out", str(out)]) == 0
    log = (out / "train.log").read_text()
    assert "row 3: not an image file" in log


def test_a_dataset_trains_under_a_token_budget(saved, tmp_path):
    folder, _ = saved
    out = tmp_path / "run"
    assert main(["train", f"hfds:{folder}", "--max-tokens", "16", "--epochs", "1", "--batch-size", "4",
                 "--workers", "0", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["recipe"]["max_tokens"] == 16

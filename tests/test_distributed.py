"""torchrun with 2 CPU processes (gloo) computes what one process computes."""

import json
import os
import subprocess
import sys

import torch
from PIL import Image
from safetensors.torch import load_file


def make_data(root):
    for c, colour in (("red", (220, 20, 20)), ("green", (20, 200, 20)), ("blue", (20, 20, 220))):
        (root / c).mkdir(parents=True)
        for i in range(21):
            Image.new("RGB", (16, 16), tuple(min(255, v + 5 * i) for v in colour)).save(root / c / f"{i}.png")


def test_two_processes_equal_one(tmp_path):
    make_data(tmp_path / "data")
    common = [str(tmp_path / "data"), "--epochs", "2", "--batch-size", "8", "--workers", "0", "--seed", "3",
              "--precision", "fp32", "--rotate", "10", "--val-split", "0.3", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "vitkit", "train", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "vitkit", "train", *common, "--out", str(tmp_path / "two"),
                          "--nproc", "2"], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stderr and two.stderr.count("epoch 2/2") == 1  # only rank 0 speaks
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for key in a:
        assert (a[key] - b[key]).abs().max().item() < 1e-5, key
    ma = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [m["val_top1"] for m in ma] == [m["val_top1"] for m in mb]
    assert abs(ma[-1]["train_loss"] - mb[-1]["train_loss"]) < 1e-5
    # evaluation sharded exactly: the same number of validation images as one process scored
    assert torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["epoch"] == 2


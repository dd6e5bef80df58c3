"""TensorBoard events in the run folder: read back with TensorBoard's own reader, they say what
metrics.jsonl says, per step and per epoch; off with --no-tensorboard."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vitkit.cli import main


def events(folder) -> EventAccumulator:
    board = EventAccumulator(str(folder))
    board.Reload()
    return board


def test_a_run_writes_its_metrics_as_tensorboard_events(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--batch-size", "64", "--out", str(out)]) == 0
    board = events(out)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [e.step for e in board.Scalars("train/loss")]
    assert steps == list(range(1, 2 * history[0]["steps"] + 1))  # every step
    assert [e.value for e in board.Scalars("val/top1")] == pytest.approx([h["val_top1"] for h in history])
    assert [e.step for e in board.Scalars("val/top1")] == [history[0]["steps"], 2 * history[0]["steps"]]
    lrs = [e.value for e in board.Scalars("train/lr")]
    assert lrs[-1] == pytest.approx(history[-1]["lr"], rel=1e-6) and max(lrs) > lrs[-1]
    assert {"speed/img_per_s", "speed/loader_wait_share", "memory/gib"} <= set(board.Tags()["scalars"])


def test_no_tensorboard_writes_no_events(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--batch-size", "64", "--no-tensorboard", "--out", str(out)]) == 0
    assert not list(out.glob("events.out.tfevents.*"))

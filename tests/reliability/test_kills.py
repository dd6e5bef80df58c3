"""SIGKILL at random points, resume each time: the end is bitwise the uninterrupted run."""

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vitkit.data import spec
from vitkit.data.loader import train_loader
from vitkit.data.transforms import train_transform
from vitkit.train.outputs import TIMING_KEYS as TIMING

FAULTS = str(Path(__file__).parents[1] / "faults.py")  # the vitkit command with a heartbeat hook
pytestmark = pytest.mark.slow  # vitkit processes killed and resumed, 100,000 files (~1-3 min each)


def make_data(root, per_class=30):
    for c, colour in (("red", (220, 20, 20)), ("green", (20, 200, 20)), ("blue", (20, 20, 220))):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), tuple(min(255, v + 4 * i) for v in colour)).save(root / c / f"{i}.png")


def metrics(run):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def progress_of(beat, steps_per_epoch: int) -> int | None:
    """How many steps the run has reached, from the heartbeat the hook writes before each step."""
    try:
        epoch, step = map(int, beat.read_text().split())
    except (OSError, ValueError):
        return None
    return epoch * steps_per_epoch + step


def test_five_sigkills_and_resumes_end_bitwise_equal_to_the_uninterrupted_run(tmp_path):
    make_data(tmp_path / "data")
    args = ["train", str(tmp_path / "data"), "--epochs", "6", "--batch-size", "4", "--workers", "1", "--seed", "7",
            "--ema", "0.9", "--mixup", "0.2", "--precision", "fp32"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, "-m", "vitkit", *args, "--out", str(tmp_path / "whole")], check=True, env=env,
                   capture_output=True)
    steps_per_epoch = 81 // 4  # 90 images, 9 held out for validation, batch 4
    run, beat, rng = tmp_path / "killed", tmp_path / "heartbeat", random.Random(0)
    command, kills = [*args, "--out", str(run)], 0
    for _ in range(5):
        saved = torch.load(run / "checkpoint.pt", weights_only=True)["progress"] if run.exists() else None
        resume_point = saved["epoch"] * steps_per_epoch + saved["step"] if saved else 0
        beat.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, FAULTS, f"heartbeat:{beat}", *command], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = min(resume_point + rng.randint(2, 2 * steps_per_epoch), 6 * steps_per_epoch - 2)  # next 2 epochs
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and (progress_of(beat, steps_per_epoch) or 0) < target:
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before the kill: kill earlier"
        assert progress_of(beat, steps_per_epoch) > resume_point  # training steps are running
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        command = ["train", "--resume", str(run)]
    subprocess.run([sys.executable, "-m", "vitkit", "train", "--resume", str(run)], check=True, env=env,
                   capture_output=True)
    assert kills == 5
    assert metrics(run) == metrics(tmp_path / "whole")
    ours, theirs = load_file(run / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_hundred_thousand_files_start_fast_and_hold_paths(tmp_path):
    root = tmp_path / "many"
    png = _png_bytes()
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(10_000):
            (root / f"class{c}" / f"{i}.png").write_bytes(png)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.time()
    splits = spec.load(str(root))
    fit = train_transform((32, 32), crop="none", min_scale=1, augment="none", magnitude=9, erasing=0)
    loader, _ = train_loader(splits.train, fit, 128, 0, workers=2)
    images, _, _ = next(iter(loader))
    elapsed = time.time() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    print(f"100,000 files: first batch after {elapsed:.1f} s, peak RSS grew {grown_mb:.0f} MB")
    assert len(splits.train) + len(splits.val) == 100_000 and images.shape == (128, 3, 32, 32)
    assert grown_mb < 100  # the pixels alone would be 100,000 x 3 x 32 x 32 = 307 MB
    assert isinstance(splits.train.sources[0], str)


def _png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()

"""The command line end to end: train, eval, predict, resume, fine-tune, and clean errors."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from helpers import make_folder, run_cli
from vitkit.cli import main
from vitkit.data.decode import read_image
from vitkit.data.transforms import eval_transform
from vitkit.model.normalization import to_model_input
from vitkit.train import trainer
from vitkit.train.outputs import TIMING_KEYS


def train_args(data, out, *extra):
    return ["train", data, "--out", out, "--batch-size", "8", "--workers", "0", "--json", *extra]


def test_train_eval_predict_and_resume_agree_with_the_saved_model_and_skip_bad_files(tmp_path, capsys):
    data = make_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    code, result, err = run_cli(capsys, *train_args(data, run, "--epochs", "1", "--val-split", "0.34"))
    assert code == 0, err
    assert result["epochs"] == 1 and result["skipped_files"] == 2
    log = (run / "train.log").read_text()
    assert "broken.jpg: not an image file" in log and "empty.png: empty file" in log
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["val_top1"] == pytest.approx(result["val_top1"])
    assert (run / "curves.png").stat().st_size > 1000
    model = vitkit.load(run)
    assert model.config.num_classes == 3
    state = load_file(run / "model.safetensors")
    assert torch.equal(state["head.weight"], model.head.weight)

    code, evaluation, err = run_cli(capsys, "eval", run, "--data", data, "--json")
    assert code == 0, err
    assert evaluation["images"] == 18  # a folder without split folders is evaluated whole
    assert len(evaluation["skipped"]) == 2
    assert sum(map(sum, evaluation["confusion"])) == 18
    assert 0 <= evaluation["top1"] <= evaluation["top5"] <= 1
    assert Path(evaluation["confusion_png"]).is_file()

    code, predictions, err = run_cli(capsys, "predict", run, data / "red", "--topk", "2", "--json")
    assert code == 0, err
    assert len(predictions) == 7  # six images and one broken file, reported, not fatal
    broken = [p for p in predictions if "error" in p]
    assert len(broken) == 1 and broken[0]["image"].endswith("broken.jpg")
    good = [p for p in predictions if "top" in p]
    assert all(len(p["top"]) == 2 and p["top"][0]["class"] in ("red", "green", "blue") for p in good)
    # the CLI's probabilities are the model's
    x = to_model_input(eval_transform((16, 16))(read_image(str(data / "red" / "0.png")))[None])
    probs = model.eval()(x).softmax(-1)[0]
    assert good[0]["top"][0]["probability"] == pytest.approx(probs.max().item(), abs=1e-5)

    # resume a finished run for more epochs is a no-op; resuming keeps the epoch count
    code, resumed, err = run_cli(capsys, "train", "--resume", run, "--json")
    assert code == 0, err
    assert resumed["epochs"] == 1


def test_the_same_seed_gives_the_same_metrics(tmp_path, capsys):
    data = make_folder(tmp_path / "imgs", corrupt=False)
    results = []
    for name in ("a", "b"):
        code, _result, err = run_cli(capsys, *train_args(data, tmp_path / name, "--epochs", "2", "--seed", "3"))
        assert code == 0, err
        results.append((tmp_path / name / "metrics.jsonl").read_text())
    strip = lambda text: [{k: v for k, v in json.loads(line).items()  # noqa: E731
                           if k not in TIMING_KEYS}
                          for line in text.splitlines()]
    assert strip(results[0]) == strip(results[1])


def test_fine_tune_to_other_classes_and_size(tmp_path, capsys):
    first = make_folder(tmp_path / "a", corrupt=False)
    code, _, err = run_cli(capsys, *train_args(first, tmp_path / "base", "--epochs", "1"))
    assert code == 0, err
    second = make_folder(tmp_path / "b", classes=("gray", "other"), size=32, corrupt=False)
    code, _result, err = run_cli(capsys, *train_args(second, tmp_path / "ft", "--epochs", "1", "--init",
                                                    tmp_path / "base", "--layer-decay", "0.75", "--image-size", "32"))
    assert code == 0, err
    tuned = vitkit.load(tmp_path / "ft")
    base = vitkit.load(tmp_path / "base")
    assert tuned.config.num_classes == 2 and tuned.config.image_hw == (32, 32)
    prefix = base.config.num_prefix_tokens
    assert tuned.pos_embed.shape[1] == prefix + 64 and base.pos_embed.shape[1] == prefix + 16
    code, _, err = run_cli(capsys, *train_args(second, tmp_path / "probe", "--epochs", "1", "--init",
                                               tmp_path / "base", "--freeze-backbone"))
    assert code == 0, err
    probe = vitkit.load(tmp_path / "probe")
    for name, value in probe.state_dict().items():
        if not name.startswith("head.") and name != "pos_embed":
            assert torch.equal(value, base.state_dict()[name]), name


@pytest.mark.parametrize(("setup", "args", "words"), [
    (None, ["train", "--data", "/no/such/dir"], "no such file"),
    ("empty", ["train", "{tmp}/empty"], "no images"),
    ("one", ["train", "{tmp}/one"], "only 1 class"),
    (None, ["train", "--data", "imagenet:/x"], "unknown data kind"),
    (None, ["eval", "{tmp}/nothing"], "no such run"),
    (None, ["predict", "{tmp}", "x.png"], "not a run directory"),
    ("run", ["train", "--resume", "{tmp}/run", "--model", "vit_b16"], "--model"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, setup, args, words):
    if setup == "empty":
        (tmp_path / "empty" / "a").mkdir(parents=True)
    if setup == "one":
        make_folder(tmp_path / "one", classes=("red",), corrupt=False)
    if setup == "run":
        make_folder(tmp_path / "d", corrupt=False)
        assert main([str(a) for a in train_args(tmp_path / "d", tmp_path / "run", "--epochs", "1")]) == 0
        capsys.readouterr()
    code, _out, err = run_cli(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # a vitkit process killed, then resumed (~30 s)
def test_killed_run_resumes_and_finishes(tmp_path):
    """SIGKILL mid-training; --resume finishes with the metrics of an uninterrupted run."""
    data = make_folder(tmp_path / "imgs", per_class=40, corrupt=False)
    common = ["--batch-size", "8", "--workers", "0", "--epochs", "6", "--seed", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "vitkit", "train", str(data), *common]
    subprocess.run([*cmd, "--out", str(tmp_path / "whole")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = metrics.read_text().count("\n")
    assert 2 <= done < 6, "the kill should land mid-run"
    subprocess.run([sys.executable, "-m", "vitkit", "train", "--resume", str(tmp_path / "killed")],
                   check=True, env=env, capture_output=True)
    whole = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [m["val_top1"] for m in resumed] == [m["val_top1"] for m in whole]
    assert [m["train_loss"] for m in resumed] == [m["train_loss"] for m in whole]
    a = load_file(tmp_path / "whole" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_recipe_knob_together_runs_and_is_recorded(tmp_path, capsys):
    """Flags combined, through the CLI; what each one does is tests/train/test_recipe_knobs.py."""
    data = make_folder(tmp_path / "imgs", per_class=8, corrupt=False)
    code, result, err = run_cli(capsys, *train_args(
        data, tmp_path / "run", "--epochs", "2", "--augment", "randaugment", "--mixup", "0.2", "--cutmix", "1.0",
        "--erasing", "0.25", "--crop", "random-resized", "--ema", "0.9", "--accum-steps", "2", "--drop-path", "0.1",
        "--dropout", "0.1", "--rotate", "10", "--translate", "0.1", "--scale-jitter", "0.1", "--precision", "bf16",
        "--label-smoothing", "0.2", "--clip-grad", "0", "--warmup-epochs", "0.5"))
    assert code == 0, err
    assert result["epochs"] == 2
    recipe = json.loads((tmp_path / "run" / "config.json").read_text())["recipe"]
    assert recipe["augment"] == "randaugment" and recipe["ema"] == 0.9 and recipe["clip_grad"] is None
    assert recipe["accum_steps"] == 2 and recipe["cutmix"] == 1.0 and recipe["crop"] == "random-resized"


@pytest.mark.slow  # a vitkit process interrupted, then resumed (~10 s)
def test_sigint_saves_a_checkpoint_that_resumes(tmp_path):
    data = make_folder(tmp_path / "imgs", per_class=40, corrupt=False)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "vitkit", "train", str(data), "--batch-size", "4", "--workers", "0",
            "--epochs", "8", "--out", str(run)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # during the second epoch
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; checkpoint saved" in err and "--resume" in err and "Traceback" not in err
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (saved["progress"]["epoch"], saved["progress"]["step"]) < (8, 0)
    assert main(["train", "--resume", str(run)]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 8


def test_a_job_slurm_requeued_resumes_from_its_out_folder(tmp_path, monkeypatch, caplog):
    """The requeued job runs the same command; SLURM_RESTART_COUNT says it is a restart."""
    run, args = tmp_path / "run", ["train", "digits", "--epochs", "2", "--workers", "0", "--out", str(tmp_path / "run")]

    def stop(r: trainer.Run) -> None:  # SIGTERM, as Slurm sends before the time limit
        if (r.progress.epoch, r.progress.step) == (1, 3):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(trainer, "STEP_HOOKS", [stop])
    assert main(args) == 130
    monkeypatch.setattr(trainer, "STEP_HOOKS", [])
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with caplog.at_level(logging.INFO, logger="vitkit"):
        assert main(args) == 0
    assert f"resuming {run} at epoch 2, step 3" in caplog.text  # where the signal stopped it
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2

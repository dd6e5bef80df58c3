"""Fuzz the command line and the model config: every failure is a clean error (exit code 2,
one line), never a traceback."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import vitkit
from vitkit.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    for c in ("a", "b"):
        (root / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (100 * i, 50, 200 if c == "a" else 0)).save(root / "data" / c / f"{i}.png")
    model = vitkit.create_model("vit_ti4_32", depth=1, num_classes=2, image_size=8)
    model.save_pretrained(root / "run", {"classes": ["a", "b"]})
    return root


NUMBERS = st.sampled_from(["0", "1", "-1", "2", "0.5", "1e30", "nan", "abc", "", "1.5"])
FLAGS = {
    "train": ["--epochs", "--batch-size", "--lr", "--val-split", "--warmup-epochs", "--ema", "--mixup", "--cutmix",
              "--erasing", "--padding", "--min-scale", "--accum-steps", "--label-smoothing", "--drop-path",
              "--image-size", "--workers", "--magnitude", "--clip-grad", "--rotate", "--translate"],
    "eval": ["--batch-size", "--workers"],
    "predict": ["--topk"],
    "convert": ["--heads", "--image-size", "--num-classes"],
    "explain": [],
    "inspect": ["--images"],
}
CHOICES = {"train": [["--crop", "pad"], ["--crop", "bogus"], ["--augment", "randaugment"], ["--precision", "fp32"],
                     ["--model", "vit_ti4_32"], ["--model", "nope"], ["--no-flip"], ["--data", "digitz"],
                     ["--data", "cifar10:/nowhere"], ["--init", "/no/such/weights"]],
           "eval": [["--split", "test"], ["--split", "val"], ["--data", "imagenet:/x"]],
           "predict": [], "convert": [["--pool", "cls"], ["--from", "jax"], ["--to", "hf"]],
           "explain": [["--method", "grad-rollout"], ["--class", "zebra"], ["--method", "last-layer"]],
           "inspect": [["--data", "/missing"]]}


@st.composite
def command_lines(draw, root):
    command = draw(st.sampled_from(sorted(FLAGS)))
    run, data = str(root / "run"), str(root / "data")
    positional = {"train": [data], "eval": [run, "--data", data], "predict": [run, data],
                  "convert": [run, "--out", str(root / "out")], "explain": [run, str(root / "data" / "a")],
                  "inspect": [run, "--data", data]}[command]
    args = [command, *draw(st.sampled_from([positional, positional[:1], [], [str(root / "missing")]]))]
    for flag in draw(st.lists(st.sampled_from(FLAGS[command]), max_size=3, unique=True)) if FLAGS[command] else []:
        args += [flag, draw(NUMBERS)]
    for extra in draw(st.lists(st.sampled_from(CHOICES[command]), max_size=2)) if CHOICES[command] else []:
        args += extra
    if command == "train":  # keep successful runs short
        args += ["--epochs", "1", "--out", str(root / "trained"), "--batch-size", "2"]
    return args


@pytest.mark.slow  # 60 command lines (~20 s)
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_command_lines_fail_with_exit_2_and_one_line(tiny, capsys, data):
    args = data.draw(command_lines(tiny))
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), (args, code, err)
    assert "Traceback" not in err, (args, err)
    if code == 2:  # one line that says what is wrong (after argparse's usage line, or training's log)
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("vitkit") and ": error: " in lines[-1], (args, err)
        assert sum(": error: " in line for line in lines) == 1, (args, err)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(fields=st.fixed_dictionaries({}, optional={
    "image_size": st.one_of(st.integers(-4, 32), st.tuples(st.integers(0, 24), st.integers(0, 24))),
    "patch_size": st.one_of(st.integers(-1, 20), st.tuples(st.integers(0, 9), st.integers(0, 9))),
    "dim": st.integers(-8, 96), "heads": st.integers(-1, 9), "depth": st.integers(-1, 3),
    "mlp_dim": st.integers(-1, 64), "head_dim": st.one_of(st.none(), st.integers(-1, 16)),
    "pool": st.sampled_from(["cls", "mean", "mean-all", "max"]), "class_token": st.booleans(),
    "pos_embed": st.sampled_from(["learned", "sincos2d", "rope"]), "norm_eps": st.floats(-1, 1),
    "dropout": st.floats(-0.5, 1.5), "num_classes": st.integers(-1, 5), "in_channels": st.integers(-1, 4),
    "patch_embed": st.sampled_from(["conv", "linear-ln", "mlp"]),
}))
def test_model_configs_build_or_explain(fields):
    try:
        config = vitkit.ViTConfig(**fields)
    except ValueError as e:
        assert str(e)
        return
    model = vitkit.ViT(config).eval()
    if config.num_patches * config.dim > 2**17:  # e.g. patch 1 at the default 224 px: 50,176 tokens,
        return  # minutes and gigabytes of attention; building it was the check
    out = model(torch.randn(1, config.in_channels, *config.image_hw))
    assert out.shape == (1, config.num_classes or config.feature_dim)

"""The training loop's hard cases: non-finite gradients, flags given on resume, the progress bar,
digits' validation split, and one preprocessing policy. (The time budget: test_budget.py.)"""

import json
import tarfile

import pytest
import torch
from PIL import Image

from vitkit.cli import main
from vitkit.data import spec
from vitkit.data.decode import read_image
from vitkit.data.transforms import eval_transform
from vitkit.distributed import World
from vitkit.model.config import ViTConfig
from vitkit.model.normalization import HALF
from vitkit.train import trainer
from vitkit.train.feed import build_feed
from vitkit.train.plan import Plan, at_size
from vitkit.train.recipe import Recipe
from vitkit.train.trainer import Run, TrainingError, train

FAST = dict(batch_size=64, workers=0, precision="fp32")


@pytest.fixture
def hook(monkeypatch):
    """`hook(fn)` installs a step hook for this test only."""
    monkeypatch.setattr(trainer, "STEP_HOOKS", [])
    return trainer.STEP_HOOKS.append


def stop_at(epoch: int, step: int):
    """A hook that asks the run to stop (as SIGINT/SIGTERM would) before that step."""
    def stop(run: Run) -> None:
        if (run.progress.epoch + 1, run.progress.step) == (epoch, step):
            run.stop.requested = True
    return stop


def blow_up_gradient_at(epoch: int, step: int):
    """A finite loss whose gradient is infinite: the head's gradient is multiplied by inf once."""
    def hook(run: Run) -> None:
        if (run.progress.epoch + 1, run.progress.step) == (epoch, step):
            handle = run.parts.model.head.weight.register_hook(lambda g: (handle.remove(), g * float("inf"))[1])
    return hook


def test_nonfinite_gradient_stops_before_the_weights_change(tmp_path, hook):
    hook(blow_up_gradient_at(2, 4))
    with pytest.raises(TrainingError, match="gradient became NaN or infinite at epoch 2, step 5"):
        train("digits", Recipe(epochs=3, **FAST), {"epochs", *FAST}, out=tmp_path / "stop")
    state = torch.load(tmp_path / "stop" / "checkpoint.pt", weights_only=True)
    assert state["progress"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nonfinite_gradient_is_skipped_with_skip_nonfinite(tmp_path, hook):
    hook(blow_up_gradient_at(2, 4))
    recipe = Recipe(epochs=2, skip_nonfinite=True, **FAST)
    result = train("digits", recipe, {"epochs", "skip_nonfinite", *FAST}, out=tmp_path / "skip")
    assert result["nonfinite_steps"] == 1
    from safetensors.torch import load_file

    assert all(torch.isfinite(v).all() for v in load_file(tmp_path / "skip" / "model.safetensors").values())


def test_digits_has_a_validation_split_apart_from_test():
    splits = spec.load("digits")
    train_x, val_x, test_x = (s.images.flatten(1) for s in (splits.train, splits.val, splits.test))
    assert len(splits.train) + len(splits.val) == 1437 and len(splits.test) == 360
    assert 140 <= len(splits.val) <= 146 and torch.bincount(splits.val.labels).min() >= 13  # stratified, 10%
    rows = lambda x: {tuple(r.tolist()) for r in x}  # noqa: E731
    assert not rows(val_x) & rows(test_x) - rows(train_x)  # no test image is a validation image


def test_test_split_is_scored_once_at_the_end(tmp_path, capsys):
    code = main(["train", "--epochs", "2", "--batch-size", "64", "--out", str(tmp_path / "r"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and 0 < result["test_top1"] <= 1 and result["test_top1"] != result["val_top1"]
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert not any("test" in key for record in records for key in record)


@pytest.mark.parametrize(("flag", "allowed"), [(["--epochs", "5"], False), (["--lr", "0.1"], False),
                                               (["--time-budget", "60"], False), (["--workers", "1"], True),
                                               (["--compile"], True), (["--no-compile"], True)])
def test_flags_on_resume_are_honoured_or_refused(tmp_path, capsys, hook, flag, allowed):
    hook(stop_at(1, 2))
    first = ["--compile"] if flag == ["--no-compile"] else []  # so that each allowed flag changes something
    assert main(["train", "--epochs", "1", "--batch-size", "64", "--out", str(tmp_path / "r"), *first]) == 130
    trainer.STEP_HOOKS.clear()
    capsys.readouterr()
    if allowed:  # honoured: seen on the resumed run at its first step (before a compiled step compiles)
        seen = []

        def probe(run: Run) -> None:
            seen.append((isinstance(run.compute, trainer.CompiledOrEager), run.plan.recipe.workers))
            run.stop.requested = True

        hook(probe)
        assert main(["train", "--resume", str(tmp_path / "r"), *flag]) == 130
        (compiled, workers), = seen
        assert compiled == (flag[0] == "--compile") and (workers == 1 or flag[0] != "--workers")
        return
    code = main(["train", "--resume", str(tmp_path / "r"), *flag])
    err = capsys.readouterr().err
    if allowed:
        assert code == 0, err
    else:
        assert code == 2 and flag[0] in err.splitlines()[-1] and "Traceback" not in err
        assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_progress_bar_follows_the_argument_after_a_mid_epoch_resume(tmp_path, capsys, hook):
    hook(stop_at(1, 5))
    with pytest.raises(KeyboardInterrupt):
        train("digits", Recipe(epochs=1, **FAST), {"epochs", *FAST}, out=tmp_path / "r", progress=False)
    trainer.STEP_HOOKS.clear()
    capsys.readouterr()
    train(resume=tmp_path / "r")  # stderr is not a terminal here: no bar
    assert "epoch 1/1:" not in capsys.readouterr().err
    hook(stop_at(1, 3))
    with pytest.raises(KeyboardInterrupt):
        train("digits", Recipe(epochs=1, **FAST), {"epochs", *FAST}, out=tmp_path / "s", progress=False)
    trainer.STEP_HOOKS.clear()
    capsys.readouterr()
    train(resume=tmp_path / "s", progress=True)
    assert "epoch 1/1:" in capsys.readouterr().err


def wide_images(root, size=16):
    """Images twice as wide as high whose centre square differs from their sides: squashing
    and cropping give different pictures."""
    for c, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        (root / c).mkdir(parents=True)
        for i in range(4):
            image = Image.new("RGB", (2 * size, size), (0, 255, 0))
            image.paste(Image.new("RGB", (size, size), tuple(v + 5 * i for v in colour)), (size // 2, 0))
            image.save(root / c / f"{i}.png")
    return root


def first_training_images(data: str, recipe: Recipe) -> torch.Tensor:
    config = ViTConfig(image_size=16, patch_size=4, dim=32, depth=1, heads=2, mlp_dim=32, num_classes=2)
    splits = at_size(spec.load(data, val_split=0.5), config.image_hw)
    feed = build_feed(Plan(data, splits, recipe, config, HALF, len(splits.train) // recipe.batch_size), World())
    feed.sampler.set_epoch(0)
    images, labels, _ = next(iter(feed.loader))
    order = [splits.train.names[i] if hasattr(splits.train, "names") else None for i, _ in feed.sampler]
    return images, labels, order


def test_one_preprocessing_policy_for_folders_archives_train_and_eval(tmp_path):
    folder = wide_images(tmp_path / "wide")
    with tarfile.open(tmp_path / "wide.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname=".")
    recipe = Recipe(batch_size=2, crop="none", flip=False, workers=0)
    expected = {name: eval_transform((16, 16))(read_image(name)) for name in map(str, folder.rglob("*.png"))}
    images, _, order = first_training_images(str(folder), recipe)
    for image, name in zip(images, order, strict=False):
        assert torch.equal(image, expected[name])  # train input == eval/predict input: centre crop, no squash
        assert (image[1] < 100).all()  # the green sides are cropped away
    archived, _, _ = first_training_images(str(tmp_path / "wide.tar.gz"), recipe)
    assert (archived[:, 1] < 100).all()  # the archive, decoded up front, follows the same policy
    assert {tuple(x.flatten().tolist()) for x in archived} <= {tuple(x.flatten().tolist()) for x in expected.values()}


def test_a_failing_compile_falls_back_to_eager(tmp_path, monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("InductorError: no working C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    recipe = Recipe(epochs=1, compile=True, **FAST)
    result = train("digits", recipe, {"epochs", "compile", *FAST}, out=tmp_path / "r")
    assert result["epochs"] == 1 and result["val_top1"] > 0.1
    assert "torch.compile failed (InductorError: no working C++ compiler); training without it" in caplog.text

"""--max-tokens training (NaFlex): each batch at a token budget drawn from the seed and the step,
so an interrupted and resumed run ends with the weights of an uninterrupted one; the plan refuses
what cannot mix images of different shapes and gives the model a patch embedding that takes
patch sequences."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.train.test_plan import cifar_like
from vitkit.cli import main
from vitkit.train import trainer
from vitkit.train.naflex_feed import NaFlexFeed, batch_budget
from vitkit.train.plan import plan
from vitkit.train.recipe import Recipe

ARGS = ["--epochs", "1", "--batch-size", "128", "--workers", "0", "--precision", "fp32", "--max-tokens", "16"]


def test_a_resumed_naflex_run_ends_with_the_uninterrupted_runs_weights(tmp_path, monkeypatch):
    lengths = []
    monkeypatch.setattr(trainer, "STEP_HOOKS", [])
    assert main(["train", *ARGS, "--out", str(tmp_path / "whole")]) == 0

    def stop(run: trainer.Run) -> None:
        lengths.append(batch_budget(run.plan.recipe, run.progress.epoch, run.progress.step))
        if run.progress.step == 4:
            run.stop.requested = True

    trainer.STEP_HOOKS.append(stop)
    assert main(["train", *ARGS, "--out", str(tmp_path / "split")]) == 130
    trainer.STEP_HOOKS.clear()
    assert main(["train", "--resume", str(tmp_path / "split")]) == 0
    a, b = (load_file(tmp_path / run / "model.safetensors") for run in ("whole", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(set(lengths)) > 1 and all(4 <= n <= 16 for n in lengths)  # budgets drawn between a quarter and all


def test_naflex_planning():
    planned = plan("tiny-cifar", cifar_like(), Recipe(max_tokens=64), {"max_tokens"})
    assert planned.config.patch_embed == "conv" and planned.config.dynamic_size and planned.recipe.mixup == 0
    refused = [(Recipe(max_tokens=64, mixup=0.2), {"max_tokens", "mixup"}, "--mixup"),
               (Recipe(max_tokens=64, min_tokens=80), {"max_tokens", "min_tokens"}, "--min-tokens 80"),
               (Recipe(max_tokens=64, model="torchvision:resnet18"), {"max_tokens"}, "a CNN")]
    for recipe, given, words in refused:
        with pytest.raises(ValueError, match=words):
            plan("tiny-cifar", cifar_like(), recipe, given)


def edges(batch, normalization, patch, channels=3) -> list[tuple[float, float]]:
    """Per image of a NaFlex batch, red minus blue in [0, 1] in its first and its last patches
    along its longer side."""
    mean, std = (torch.tensor(v).expand(channels) for v in (normalization.mean, normalization.std))
    out = []
    for patches, coords, valid in zip(*batch, strict=True):
        pixels = patches[valid].reshape(-1, patch[0] * patch[1], channels) * std + mean
        redness = (pixels[..., 0] - pixels[..., 2]).mean(1)
        rows, cols = coords[valid].T
        along = cols if cols.max() >= rows.max() else rows
        out.append((float(redness[along == 0].mean()), float(redness[along == along.max()].mean())))
    return out


def test_image_files_of_mixed_shapes_train_whole_at_their_own_aspect_ratio(tmp_path, monkeypatch):
    """Each image red at one end of its longer side and blue at the other (an eighth of it each),
    green between: whatever grid it gets, its first patches are red and its last blue, which a crop
    would cut away."""
    shapes = {"square": (32, 32), "tall": (48, 16), "wide": (16, 48)}  # a class a shape (classes sort by name)
    for name, (h, w) in shapes.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        pixels = np.zeros((max(h, w), min(h, w), 3), dtype=np.uint8) + np.uint8([0, 200, 0])
        pixels[: max(h, w) // 8], pixels[-(max(h, w) // 8):] = [255, 0, 0], [0, 0, 255]
        for i in range(4):
            Image.fromarray(pixels if h > w else pixels.transpose(1, 0, 2)).save(tmp_path / "data" / name / f"{i}.png")
    seen = []
    prepare = NaFlexFeed.prepare

    def spy(feed, images, labels, epoch, step):
        batch = prepare(feed, images, labels, epoch, step)
        seen.append((batch.images.grids(), labels.tolist(), batch_budget(feed.recipe, epoch, step),
                     edges(batch.images, feed.normalization, feed.config.patch_hw)))
        return batch

    monkeypatch.setattr(NaFlexFeed, "prepare", spy)
    assert main(["train", str(tmp_path / "data"), "--max-tokens", "12", "--epochs", "3", "--batch-size", "6",
                 "--crop", "none", "--no-flip", "--workers", "0", "--model-option", "depth=1",
                 "--out", str(tmp_path / "run")]) == 0
    assert seen and any(len(set(grids)) > 1 for grids, *_ in seen)  # batches mix shapes
    for grids, labels, budget, ends in seen:
        for (rows, cols), label, (first, last) in zip(grids, labels, ends, strict=True):
            h, w = shapes[sorted(shapes)[label]]
            assert rows * cols <= budget and (rows > cols) == (h > w)  # the budget and the orientation kept
            if max(rows, cols) > 1:  # the image whole: its red end first, its blue end last
                assert first > 0.2 and last < -0.2, (rows, cols, first, last)

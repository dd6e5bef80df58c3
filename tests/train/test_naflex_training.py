"""--max-tokens training (NaFlex): each batch at a token budget drawn from the seed and the step,
so an interrupted and resumed run ends with the weights of an uninterrupted one; the plan refuses
what cannot mix images of different shapes and gives the model a patch embedding that takes
patch sequences."""

import pytest
import torch
from safetensors.torch import load_file

from tests.train.test_plan import cifar_like
from vitkit.cli import main
from vitkit.train import trainer
from vitkit.train.naflex_feed import batch_budget
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
